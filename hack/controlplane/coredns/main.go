// CoreDNS for the real node of the local cluster (hush dev up --real-node), with only the
// plugins its Corefile uses (operator/hush/dev/cluster_dns.py).
//
// Why an external main instead of CoreDNS's own: its main imports core/plugin, which links
// every plugin (the AWS, Azure, Google Cloud, DataDog and etcd clients among them) and more
// than doubles the cold build. CoreDNS documents this way of choosing plugins at compile
// time: import the plugins wanted and set dnsserver.Directives, in the order of CoreDNS's
// plugin.cfg, before coremain.Run parses the Corefile. "forward" is deliberately absent: the
// binary cannot send a query to an upstream resolver, whatever a Corefile says.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// directives is CoreDNS's plugin.cfg order restricted to the plugins imported above: a
// request passes through them in this order whatever the order in the Corefile.
var directives = []string{
	"reload",
	"ready",
	"health",
	"errors",
	"log",
	"cache",
	"kubernetes",
	"loop",
}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
