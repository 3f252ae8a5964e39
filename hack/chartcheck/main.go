// Command chartcheck checks what the Hush chart hands to Prometheus and Grafana with their own
// code, not with regular expressions:
//
//   - every PrometheusRule in a rendered chart (a `helm template` YAML stream) is checked the
//     way `promtool check rules` checks a rule file: each alert's `expr` goes through the
//     PromQL parser (promql/parser, ParseExpr), then the groups go through model/rulefmt
//     (durations, label names, annotation templates, duplicate groups, unknown fields);
//   - every Grafana dashboard (the files given with -dashboard, and the `*.json` entries of
//     rendered ConfigMaps that carry a `schemaVersion`) is decoded strictly into the Grafana
//     Foundation SDK's dashboard model (dashboard.Dashboard.UnmarshalJSONStrict: unknown
//     fields, wrong types and missing required fields are errors; panel options and
//     Prometheus targets are decoded into their plugin's own types), validated
//     (Dashboard.Validate), and every Prometheus target's `expr` is parsed as PromQL after
//     Grafana's variables are replaced by values of the right kind.
//
// It deliberately does not evaluate anything: there is no Prometheus or Grafana to ask, so
// metric names are checked elsewhere (tests/unit/test_chart.py). Every problem is printed on
// stderr, one per line, naming the object, the alert or panel, and the parser's message; the
// exit status is 1 when there is any, 2 on bad usage.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"
)

type stringList []string

func (list *stringList) String() string         { return strings.Join(*list, ",") }
func (list *stringList) Set(value string) error { *list = append(*list, value); return nil }

// checker collects problems instead of stopping at the first, so one run shows them all.
type checker struct {
	promql     parser.Parser
	problems   []string
	rules      int
	dashboards int
	queries    int
}

// problem records a problem once: rulefmt, for one, reports a YAML error from both of its
// decodings, and a query may use an undefined variable several times.
func (c *checker) problem(format string, arguments ...any) {
	text := fmt.Sprintf(format, arguments...)
	if !slices.Contains(c.problems, text) {
		c.problems = append(c.problems, text)
	}
}

func main() {
	var dashboards stringList
	rendered := flag.String("rendered", "", "a `helm template` YAML stream (- for stdin)")
	flag.Var(&dashboards, "dashboard", "a Grafana dashboard JSON file (repeatable)")
	flag.Parse()
	if *rendered == "" && len(dashboards) == 0 || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: chartcheck [-rendered FILE|-] [-dashboard FILE]...")
		os.Exit(2)
	}
	c := &checker{promql: parser.NewParser(parser.Options{})}
	// Without the plugins the SDK decodes panel options and targets as untyped maps.
	plugins.RegisterDefaultPlugins()

	if *rendered != "" {
		content, err := readInput(*rendered)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		c.checkStream(content)
		if c.rules == 0 {
			c.problem("%s: no alerting or recording rule found: render with "+
				"--api-versions monitoring.coreos.com/v1 so that the PrometheusRule renders", *rendered)
		}
	}
	for _, path := range dashboards {
		content, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		c.checkDashboard(path, content)
	}

	for _, problem := range c.problems {
		fmt.Fprintln(os.Stderr, problem)
	}
	if len(c.problems) > 0 {
		fmt.Fprintf(os.Stderr, "%d problem(s)\n", len(c.problems))
		os.Exit(1)
	}
	fmt.Printf("Checked %d rule expression(s), %d dashboard(s) and their %d PromQL query(ies)\n",
		c.rules, c.dashboards, c.queries)
}

func readInput(path string) ([]byte, error) {
	if path == "-" {
		return io.ReadAll(os.Stdin)
	}
	return os.ReadFile(path)
}

type object struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name      string `yaml:"name"`
		Namespace string `yaml:"namespace"`
	} `yaml:"metadata"`
	Spec yaml.Node         `yaml:"spec"`
	Data map[string]string `yaml:"data"`
}

func (o *object) name() string {
	return fmt.Sprintf("%s %s/%s", o.Kind, o.Metadata.Namespace, o.Metadata.Name)
}

func (c *checker) checkStream(content []byte) {
	decoder := yaml.NewDecoder(bytes.NewReader(content))
	for index := 0; ; index++ {
		var document object
		err := decoder.Decode(&document)
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			c.problem("document %d of the rendered chart is not YAML: %v", index, err)
			return
		}
		switch document.Kind {
		case "PrometheusRule":
			c.checkPrometheusRule(&document)
		case "ConfigMap":
			for key, value := range document.Data {
				if strings.HasSuffix(key, ".json") && isDashboard(value) {
					c.checkDashboard(fmt.Sprintf("%s data %s", document.name(), key), []byte(value))
				}
			}
		}
	}
}

func isDashboard(content string) bool {
	var probe map[string]json.RawMessage
	if json.Unmarshal([]byte(content), &probe) != nil {
		return false
	}
	_, found := probe["schemaVersion"]
	return found
}

// The PrometheusRule's spec is a Prometheus rule file (groups of rules); the operator copies
// it into the file Prometheus loads.
type ruleSpec struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert  string `yaml:"alert"`
			Record string `yaml:"record"`
			Expr   string `yaml:"expr"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func (c *checker) checkPrometheusRule(rule *object) {
	var spec ruleSpec
	if err := rule.Spec.Decode(&spec); err != nil {
		c.problem("%s: spec is not a rule file: %v", rule.name(), err)
		return
	}
	for _, group := range spec.Groups {
		for index, entry := range group.Rules { // rulefmt counts rules from 1
			name := entry.Alert
			if name == "" {
				name = entry.Record
			}
			c.rules++
			if _, err := c.promql.ParseExpr(entry.Expr); err != nil {
				c.problem("%s, group %q, rule %d, %q: invalid PromQL: %v\n  expr: %s",
					rule.name(), group.Name, index+1, name, oneLine(err), strings.TrimSpace(entry.Expr))
			}
		}
	}
	// What promtool check rules does with a rule file, beyond the expressions.
	content, err := yaml.Marshal(&rule.Spec)
	if err != nil {
		c.problem("%s: %v", rule.name(), err)
		return
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	_, errs := rulefmt.Parse(content, false, model.UTF8Validation, c.promql, logger)
	for _, err := range errs {
		// The same parser already reported it above, with the expression.
		var parseErrors parser.ParseErrors
		if !errors.As(err, &parseErrors) {
			c.problem("%s: rule file: %v", rule.name(), oneLine(err))
		}
	}
}

// Grafana's own variables, replaced by a value of the kind Grafana substitutes: an interval
// where PromQL wants a duration, a number where it wants one.
var builtinVariables = map[string]string{
	"__interval": "1m", "__rate_interval": "4m", "__range": "1h", "__auto": "1m",
	"__interval_ms": "60000", "__rate_interval_ms": "240000",
	"__range_s": "3600", "__range_ms": "3600000",
}

// $name, ${name}, ${name:format}, [[name]] and [[name:format]].
var variableReference = regexp.MustCompile(
	`\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]`)

// substitute replaces the variables in a query. A dashboard variable of type interval becomes
// a duration; any other one a plain word, which is what a label matcher's regular expression
// receives. A variable the dashboard does not define stays in the query as text in Grafana,
// so it is reported.
func substitute(query string, variables map[string]dashboard.VariableType) (string, []string) {
	var undefined []string
	result := variableReference.ReplaceAllStringFunc(query, func(reference string) string {
		groups := variableReference.FindStringSubmatch(reference)
		name := groups[1] + groups[2] + groups[3]
		if value, found := builtinVariables[name]; found {
			return value
		}
		kind, found := variables[name]
		switch {
		case !found:
			undefined = append(undefined, name)
			return reference
		case kind == dashboard.VariableTypeInterval:
			return "5m"
		default:
			return "hush"
		}
	})
	return result, undefined
}

func (c *checker) checkDashboard(source string, content []byte) {
	c.dashboards++
	var model dashboard.Dashboard
	if err := model.UnmarshalJSONStrict(content); err != nil {
		// It decodes what it can and collects every error: go on with the queries it read.
		c.modelProblems(source, err)
	}
	if err := model.Validate(); err != nil {
		c.modelProblems(source, err)
	}
	variables := map[string]dashboard.VariableType{}
	for _, variable := range model.Templating.List {
		variables[variable.Name] = variable.Type
	}
	var panels []dashboard.Panel
	for _, entry := range model.Panels {
		switch {
		case entry.Panel != nil:
			panels = append(panels, *entry.Panel)
		case entry.RowPanel != nil:
			panels = append(panels, entry.RowPanel.Panels...)
		}
	}
	for _, panel := range panels {
		title := "(untitled)"
		if panel.Title != nil {
			title = *panel.Title
		}
		where := fmt.Sprintf("%s: panel %q", source, title)
		// An unknown type would have had its options accepted as an untyped map.
		if _, known := cog.ConfigForPanelcfgVariant(panel.Type); !known {
			c.problem("%s: unknown panel type %q", where, panel.Type)
		}
		for index, target := range panel.Targets {
			query, isPrometheus := target.(*prometheus.Dataquery)
			if !isPrometheus {
				c.problem("%s, target %d: not a Prometheus query (%s): set its datasource type",
					where, index, target.DataqueryType())
				continue
			}
			c.queries++
			expression, undefined := substitute(query.Expr, variables)
			for _, name := range undefined {
				c.problem("%s, target %d: $%s is not a variable of the dashboard", where, index, name)
			}
			if _, err := c.promql.ParseExpr(expression); err != nil {
				c.problem("%s, target %d: invalid PromQL: %v\n  expr: %s",
					where, index, oneLine(err), expression)
			}
		}
	}
}

// modelProblems reports each of the SDK's errors (it collects them all, one per field path).
func (c *checker) modelProblems(source string, err error) {
	var each cog.BuildErrors
	if !errors.As(err, &each) {
		c.problem("%s: not a valid Grafana dashboard: %v", source, oneLine(err))
		return
	}
	for _, one := range each {
		c.problem("%s: not a valid Grafana dashboard: %v", source, oneLine(one))
	}
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}
