// Command hush-fixed-rate sends HTTP requests (GETs, or POSTs of a fixed body with -method and
// -body-file, over TLS trusting -ca-file) at a fixed rate (open loop) and prints their
// latency percentiles as one JSON object.
// bench/bench_sidecar.py uses it for the latency
// rows at 500 requests/s, because wrk keeps a fixed number of requests in flight (closed
// loop) and Debian has no wrk2.
//
// Open loop: request i is due at start + i/rate whatever happened to earlier ones; each is
// sent from its own goroutine, and the transport opens another keep-alive connection when
// all are busy (up to -max-connections; beyond that a request waits for a free connection
// and the wait counts in its latency), so a slow server never slows the sender down (no
// coordinated omission).
//
// Two latencies are recorded per request: from the moment it was sent ("latency", what the
// benchmark reports) and from the moment it was due ("latency from due time"). Their
// difference is the generator's own lag (timer wake-up, goroutine start); the output gives
// its percentiles and the CPU the generator used, which is how a run shows that the
// generator kept up and was not the bottleneck.
//
// Closed loop (-clients N -requests M): N workers, each sending its next request the moment
// the previous one is answered, until M requests were sent; the rate is what the server
// sustains. bench/bench_accountant.py uses it for its 1/10/50-client rows: a Python client
// there cost a third of a core of this 2-core machine, which the server under test then
// lacked. In a POST body, every "{{id}}" becomes a number unique to the request (request
// ids that retries must not reuse).
//
// Standard library only; hack/bench-tools.sh builds it into the benchmark tool cache.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type percentiles struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

type result struct {
	URL              string      `json:"url"`
	TargetRate       float64     `json:"target_rate"`
	DurationSeconds  float64     `json:"duration_s"`
	Sent             int         `json:"sent"`
	OK               int         `json:"ok"`
	Failed           int         `json:"failed"`
	FirstFailure     string      `json:"first_failure,omitempty"`
	AchievedRate     float64     `json:"achieved_rate"`
	LatencyMs        percentiles `json:"latency_ms"`
	FromDueTimeMs    percentiles `json:"latency_from_due_time_ms"`
	SendLagMs        percentiles `json:"send_lag_ms"`
	GeneratorCPUFrac float64     `json:"generator_cpu_fraction"`
}

// summarise returns the percentiles of values (seconds) in milliseconds.
func summarise(values []float64) percentiles {
	if len(values) == 0 {
		return percentiles{}
	}
	sorted := slices.Clone(values)
	slices.Sort(sorted)
	at := func(q float64) float64 {
		index := int(q * float64(len(sorted)-1))
		return sorted[index] * 1000
	}
	total := 0.0
	for _, value := range sorted {
		total += value
	}
	return percentiles{
		P50: at(0.50), P90: at(0.90), P99: at(0.99), P999: at(0.999),
		Max: sorted[len(sorted)-1] * 1000, Mean: total / float64(len(sorted)) * 1000,
	}
}

func cpuSeconds() float64 {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return 0
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano()).Seconds()
}

type sample struct {
	due, sent, done time.Time
	err             string
}

// requestSpec is what every request sends: GET by default; POST with a body for webhooks.
type requestSpec struct {
	method        string
	body          []byte
	contentType   string
	authorization string
}

// bodyFor is the body of request index: "{{id}}" replaced by the index.
func (spec requestSpec) bodyFor(index int) []byte {
	return bytes.ReplaceAll(spec.body, []byte("{{id}}"), []byte(strconv.Itoa(index)))
}

// send performs one request and records when it was sent and answered, and why it failed.
func send(client *http.Client, spec requestSpec, target string, body []byte, slot *sample) {
	slot.sent = time.Now()
	request, err := http.NewRequest(spec.method, target, bytes.NewReader(body))
	if err != nil {
		slot.done = time.Now()
		slot.err = err.Error()
		return
	}
	if spec.contentType != "" {
		request.Header.Set("Content-Type", spec.contentType)
	}
	if spec.authorization != "" {
		request.Header.Set("Authorization", spec.authorization)
	}
	reply, err := client.Do(request)
	if err == nil {
		_, err = io.Copy(io.Discard, reply.Body)
		reply.Body.Close()
		if err == nil && reply.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %d", reply.StatusCode)
		}
	}
	slot.done = time.Now()
	if err != nil {
		slot.err = err.Error()
	}
}

// closedLoop sends count requests from clients workers, each waiting for its last answer.
func closedLoop(client *http.Client, spec requestSpec, url string, clients, count, offset int) []sample {
	samples := make([]sample, count)
	var next atomic.Int64
	var group sync.WaitGroup
	for range clients {
		group.Add(1)
		go func() {
			defer group.Done()
			for {
				index := int(next.Add(1)) - 1
				if index >= count {
					return
				}
				slot := &samples[index]
				send(client, spec, url, spec.bodyFor(offset+index), slot)
				slot.due = slot.sent
			}
		}()
	}
	group.Wait()
	return samples
}

// run sends requests at rate for duration; queryPrefix, when set, makes every URL distinct.
func run(client *http.Client, spec requestSpec, url, queryPrefix string, rate float64, duration time.Duration) []sample {
	count := int(rate * duration.Seconds())
	samples := make([]sample, count)
	interval := time.Duration(float64(time.Second) / rate)
	var group sync.WaitGroup
	start := time.Now()
	for index := range count {
		due := start.Add(time.Duration(index) * interval)
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
		target := url
		if queryPrefix != "" {
			target = fmt.Sprintf("%s?r=%s%d", url, queryPrefix, index)
		}
		group.Add(1)
		go func(slot *sample) {
			defer group.Done()
			slot.due = due
			send(client, spec, target, spec.bodyFor(index), slot)
		}(&samples[index])
	}
	group.Wait()
	return samples
}

func main() {
	url := flag.String("url", "", "URL to GET (without a query string)")
	rate := flag.Float64("rate", 500, "requests per second")
	duration := flag.Duration("duration", 15*time.Second, "measured duration")
	warmup := flag.Duration("warmup", 2*time.Second, "unrecorded warm-up at the same rate")
	queryPrefix := flag.String("query-prefix", "",
		"when set, request i asks URL?r=<prefix><i>, so no two requests are identical")
	timeout := flag.Duration("timeout", 60*time.Second, "per-request timeout")
	maxConnections := flag.Int("max-connections", 256, "most connections open at once")
	method := flag.String("method", "GET", "HTTP method")
	bodyFile := flag.String("body-file", "", "file whose bytes are each request's body")
	contentType := flag.String("content-type", "", "Content-Type of the body")
	caFile := flag.String("ca-file", "", "PEM bundle to trust for https URLs")
	clients := flag.Int("clients", 0, "closed loop: this many workers, one request in flight each")
	requests := flag.Int("requests", 0, "closed loop: requests to send in all (after -warmup-requests)")
	warmupRequests := flag.Int("warmup-requests", 0, "closed loop: unrecorded requests first")
	bearerFile := flag.String("bearer-file", "", "file holding a token sent as Authorization: Bearer")
	flag.Parse()
	closed := *clients > 0
	if *url == "" || (!closed && *rate <= 0) || (closed && *requests <= 0) {
		fmt.Fprintln(os.Stderr, "usage: hush-fixed-rate -url URL [-rate N] [-duration D] | "+
			"[-clients N -requests M]")
		os.Exit(2)
	}
	spec := requestSpec{method: *method, contentType: *contentType}
	if *bearerFile != "" {
		token, err := os.ReadFile(*bearerFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		spec.authorization = "Bearer " + strings.TrimSpace(string(token))
	}
	if *bodyFile != "" {
		body, err := os.ReadFile(*bodyFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		spec.body = body
	}
	transport := &http.Transport{
		MaxIdleConnsPerHost: *maxConnections,
		MaxConnsPerHost:     *maxConnections,
		DisableCompression:  true,
		IdleConnTimeout:     time.Minute,
	}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			fmt.Fprintln(os.Stderr, "no certificates in", *caFile)
			os.Exit(2)
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	client := &http.Client{Timeout: *timeout, Transport: transport}
	var samples []sample
	var cpuBefore float64
	var started time.Time
	if closed {
		if *warmupRequests > 0 {
			closedLoop(client, spec, *url, *clients, *warmupRequests, 0)
		}
		cpuBefore, started = cpuSeconds(), time.Now()
		samples = closedLoop(client, spec, *url, *clients, *requests, *warmupRequests)
	} else {
		if *warmup > 0 {
			run(client, spec, *url, *queryPrefix+"warmup-", *rate, *warmup)
		}
		cpuBefore, started = cpuSeconds(), time.Now()
		samples = run(client, spec, *url, *queryPrefix, *rate, *duration)
	}
	elapsed := time.Since(started).Seconds()
	cpuUsed := cpuSeconds() - cpuBefore

	out := result{URL: *url, DurationSeconds: elapsed, Sent: len(samples)}
	if !closed {
		out.TargetRate = *rate
	}
	var latency, fromDue, lag []float64
	for _, item := range samples {
		if item.err != "" {
			out.Failed++
			if out.FirstFailure == "" {
				out.FirstFailure = item.err
			}
			continue
		}
		out.OK++
		latency = append(latency, item.done.Sub(item.sent).Seconds())
		fromDue = append(fromDue, item.done.Sub(item.due).Seconds())
		lag = append(lag, item.sent.Sub(item.due).Seconds())
	}
	if closed {
		out.AchievedRate = float64(out.OK) / elapsed
	} else if len(samples) > 0 {
		span := samples[len(samples)-1].sent.Sub(samples[0].sent).Seconds()
		if span > 0 {
			out.AchievedRate = float64(len(samples)-1) / span
		}
	}
	out.LatencyMs = summarise(latency)
	out.FromDueTimeMs = summarise(fromDue)
	out.SendLagMs = summarise(lag)
	out.GeneratorCPUFrac = cpuUsed / elapsed
	encoder := json.NewEncoder(os.Stdout)
	if err := encoder.Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
