"""hush.dev.

A real Kubernetes control plane on loopback for development, demos and e2e tests, without
Docker (and, unless ``--no-hush``, with Hush installed on it):
etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok run as host processes
built from source by ``hack/controlplane/build.sh`` (docs/local-control-plane.md says why).

One module, one job:

- ``layout``: where a cluster keeps its files (state dir, tmpfs etcd data, pid and log files).
- ``ports``: free loopback ports.
- ``pki``: the certificate authority, certificates and service-account keys.
- ``kubeconfigs``: kubeconfig documents for the admin and each component.
- ``binaries``: finding (and if needed building) the control plane binaries.
- ``components``: the command line of each component (pure builders).
- ``processes``: starting, checking and stopping daemonised processes.
- ``health``: the HTTP probes that say a component is ready.
- ``bootstrap``: the objects every dev cluster needs (Nodes, Hush CRDs), applied with kubectl.
- ``cluster``: ``up``/``down``/``status``, composing the modules above.
- ``install``: all of Hush on a dev cluster (the operator as a host process, its webhook
  configurations and admission policies), or its removal (``up --no-hush``).
- ``demo``: ``hush dev demo`` (``make demo``), the Hush story told with real objects, with
  ``demo_objects`` (its manifests, pure), ``sample_app`` (the application behind the sidecar)
  and ``host_sidecar`` (a Pod's injected sidecar container run as a host process).
- ``real_node`` (``up --real-node``): one node where containers really run (containerd,
  runc, CNI bridge, kubelet, kube-proxy), with ``network_guard`` (bridge, routes and
  nftables drops that keep every packet on the machine), ``host_setup`` (Debian packages),
  ``containerd_config`` (containerd and CNI configs, pure) and ``oci_image`` (the node's
  images, built here).
- ``errors``: the one exception the CLI turns into a message and exit code 1.

Nothing here is used by the operator at runtime: this package only stands a cluster up.
"""
