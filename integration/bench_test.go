//go:build bench

package integration

// make bench: hybrid against direct loopback and ssh -L, in one run, as
// issue 11 measures it. Built only with -tags bench, so that make test
// never sees it: figures, not pass/fail, and no test depends on timing.
// docs/performance.md says what each figure is.

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// benchSettings are the sizes of one run: BENCH=full (the default) or
// BENCH=tiny (CI: that it runs, in well under a minute); BENCH_ROUNDS
// overrides the rounds. BENCH_SETUPS=native,ssh (keys as in bench.json)
// runs only those setups besides direct, and BENCH_GO=0 leaves out the Go
// benchmarks: for a quicker look while working on one path.
type benchSettings struct {
	Name string `json:"name"`
	// Rounds of every timed measure; within a round each measure visits
	// every setup before the next measure starts, in an order rotated
	// from round to round. Figures are the medians over the rounds.
	Rounds int `json:"rounds"`
	// TransferBytes is one throughput sample's size, split over its
	// streams; a sample stops at TransferLimit even short of it.
	TransferBytes int64         `json:"transfer_bytes"`
	TransferLimit time.Duration `json:"transfer_limit_ns"`
	// Connects is the number of connect+echo samples per round, fewer
	// when they take longer than ConnectLimit.
	Connects     int           `json:"connects"`
	ConnectLimit time.Duration `json:"connect_limit_ns"`
	// RateWorkers run connect+echo back to back for RateTime per round.
	RateWorkers int           `json:"rate_workers"`
	RateTime    time.Duration `json:"rate_time_ns"`
	// RoundTrips is the number of 1-byte round trips per round, fewer
	// when they take longer than RoundTripLimit.
	RoundTrips     int           `json:"round_trips"`
	RoundTripLimit time.Duration `json:"round_trip_limit_ns"`
	// IdleStreams are opened per setup for the memory figures, and
	// ManyStreams at once on native (issue 11: 10,000); both
	// IdleWorkers at a time.
	IdleStreams int `json:"idle_streams"`
	ManyStreams int `json:"many_streams"`
	IdleWorkers int `json:"idle_workers"`
	// GoBenchTime is the Go benchmarks' -benchtime.
	GoBenchTime string `json:"go_benchtime"`
}

// benchSettingsFromEnv reads BENCH, BENCH_ROUNDS and BENCH_MANY.
func benchSettingsFromEnv(t *testing.T) benchSettings {
	t.Helper()
	// Sized so that the whole of make bench, the build included, takes
	// under 3 minutes on the 2-core machine.
	s := benchSettings{Name: "full", Rounds: 3, TransferBytes: 256 << 20, TransferLimit: 500 * time.Millisecond,
		Connects: 300, ConnectLimit: 2 * time.Second, RateWorkers: 20, RateTime: time.Second,
		RoundTrips: 1000, RoundTripLimit: time.Second,
		IdleStreams: 1000, ManyStreams: 10000, IdleWorkers: 20, GoBenchTime: "500ms"}
	switch os.Getenv("BENCH") {
	case "", "full":
	case "tiny":
		s = benchSettings{Name: "tiny", Rounds: 1, TransferBytes: 16 << 20, TransferLimit: 250 * time.Millisecond,
			Connects: 50, ConnectLimit: time.Second, RateWorkers: 20, RateTime: 250 * time.Millisecond,
			RoundTrips: 200, RoundTripLimit: time.Second,
			IdleStreams: 200, ManyStreams: 1000, IdleWorkers: 20, GoBenchTime: "100x"}
	default:
		t.Fatalf("BENCH=%q: want full or tiny", os.Getenv("BENCH"))
	}
	if v := os.Getenv("BENCH_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("BENCH_ROUNDS=%q: want a positive number", v)
		}
		s.Rounds = n
	}
	if v := os.Getenv("BENCH_MANY"); v != "" {
		// Fewer concurrent idle streams, for a machine whose descriptor
		// limit cannot be raised to the 10,000's (reported, not judged).
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("BENCH_MANY=%q: want a positive number", v)
		}
		s.ManyStreams = n
	}
	return s
}

// benchRun is what one run measured.
type benchRun struct {
	settings benchSettings
	setups   []*benchSetup
	// samples holds one figure per round: setup key → measure key.
	samples map[string]map[string][]float64
	// fails counts the failed connections and transfers of the timed
	// measures, per setup key.
	fails map[string]*tally
	// idle is the idle-stream phase per setup key; many the native
	// setup's ManyStreams, or manySkipped why not.
	idle        map[string]*idleFigures
	many        *idleFigures
	manySkipped string
	goBench     []goBench
	started     time.Time
}

func (r *benchRun) add(s *benchSetup, measure string, v float64) {
	if r.samples[s.Key] == nil {
		r.samples[s.Key] = map[string][]float64{}
	}
	r.samples[s.Key][measure] = append(r.samples[s.Key][measure], v)
}

// progress prints a line of where the run is, with the time so far.
func (r *benchRun) progress(format string, a ...any) {
	fmt.Printf("bench %5.1fs  %s\n", time.Since(r.started).Seconds(), fmt.Sprintf(format, a...))
}

// TestBench is make bench. It runs the Go benchmarks, starts every setup,
// measures idle-stream memory on each, then runs the rounds of timed
// measures, holds ManyStreams idle streams on native, prints the figures,
// the ratios to direct and issue 11's targets, and writes bench.json
// (BENCH_JSON, default bench.json in the temp dir).
func TestBench(t *testing.T) {
	r := &benchRun{settings: benchSettingsFromEnv(t), samples: map[string]map[string][]float64{},
		fails: map[string]*tally{}, idle: map[string]*idleFigures{}, started: time.Now()}
	s := r.settings
	r.progress("settings %s: %s", s.Name, s.describe())
	// Descriptors: the client and the resource (this process) hold two
	// per stream, each role two per stream it carries.
	noFileErr := raiseNoFile(t, uint64(2*s.ManyStreams+4096))

	if os.Getenv("BENCH_GO") != "0" {
		var err error
		r.progress("Go benchmarks (-benchtime %s)", s.GoBenchTime)
		if r.goBench, err = runGoBenchmarks(s.GoBenchTime); err != nil {
			t.Errorf("Go benchmarks: %v", err)
		}
		printGoBench(r.goBench)
	}

	r.progress("starting the setups")
	res := startBenchResource(t)
	var only []string
	if v := os.Getenv("BENCH_SETUPS"); v != "" {
		only = strings.Split(v, ",")
	}
	r.setups = startBenchSetups(t, res, only)
	var live []*benchSetup
	for _, st := range r.setups {
		if st.Skipped != "" {
			r.progress("%s: not run: %s", st.Name, st.Skipped)
			continue
		}
		r.fails[st.Key] = &tally{}
		live = append(live, st)
	}
	// Memory first, on processes that have only warmed up: later, after
	// gigabytes, their heaps hold free memory that new streams would
	// reuse unseen.
	for _, st := range live {
		r.measureMemory(st, res)
	}
	for round := 0; round < s.Rounds; round++ {
		r.runRound(round, live)
	}
	r.holdMany(res, noFileErr)

	r.report()
	path := os.Getenv("BENCH_JSON")
	if path == "" {
		path = filepath.Join(os.TempDir(), "bench.json")
	}
	if err := r.writeJSON(path); err != nil {
		t.Errorf("writing %s: %v", path, err)
	} else {
		fmt.Printf("\nfigures written to %s (%.0f s in all)\n", path, time.Since(r.started).Seconds())
	}
	// The run failed when a setup that ran gave no figure at all for a
	// measure; figures that miss their targets are findings, not failures.
	for _, st := range live {
		for _, m := range benchMeasures() {
			if _, ok := r.median(st.Key, m.Key); !ok && !(st.Key == "direct" && m.Key == "rss") {
				t.Errorf("%s: no figure for %s (failures: %d, first: %s)", st.Name, m.Name, r.fails[st.Key].N, r.fails[st.Key].First)
			}
		}
	}
}

// measureMemory is the idle-stream phase of one setup, after 20
// connect+echo to warm it.
func (r *benchRun) measureMemory(st *benchSetup, res *benchResource) {
	for i := 0; i < benchWarm; i++ {
		r.fails[st.Key].add(connectEcho(st.Echo))
	}
	f := measureIdle(st, res, r.settings.IdleStreams, r.settings.IdleWorkers)
	r.idle[st.Key] = f
	if f.Opened > 0 {
		if st.Key != "direct" {
			r.add(st, "rss", f.RSSKiB)
		}
		r.add(st, "kernel", f.KernelKiB)
	}
	r.progress("%s: %d idle streams: per stream %.1f KiB RSS, %.1f KiB kernel, %.1f descriptors (%.1f sockets); %d failures%s",
		st.Name, f.Opened, f.RSSKiB, f.KernelKiB, f.FDs, f.Sockets, f.Fails.N, lingerNote(f))
}

// runRound is one round of the timed measures: each visits every setup,
// starting round places into the list, before the next one starts.
func (r *benchRun) runRound(round int, live []*benchSetup) {
	s := r.settings
	order := append(append([]*benchSetup(nil), live[round%len(live):]...), live[:round%len(live)]...)
	r.progress("round %d/%d: throughput", round+1, s.Rounds)
	for _, m := range []struct {
		key     string
		dir     byte
		streams int
	}{{"up1", 'U', 1}, {"down1", 'Z', 1}, {"up4", 'U', 4}, {"down4", 'Z', 4}} {
		for _, st := range order {
			g, err := transfer(st.Blast, m.dir, m.streams, s.TransferBytes, s.TransferLimit)
			if err != nil {
				r.fails[st.Key].add(fmt.Errorf("%s: %w", m.key, err))
				continue
			}
			r.add(st, m.key, g)
		}
	}
	r.progress("round %d/%d: connect+echo latency", round+1, s.Rounds)
	for _, st := range order {
		if p50, p99, ok := connectLatency(st.Echo, s.Connects, s.ConnectLimit, r.fails[st.Key]); ok {
			r.add(st, "connect_p50", p50)
			r.add(st, "connect_p99", p99)
		}
	}
	r.progress("round %d/%d: connections per second", round+1, s.Rounds)
	for _, st := range order {
		r.add(st, "conn_rate", connRate(st.Echo, s.RateWorkers, s.RateTime, r.fails[st.Key]))
	}
	r.progress("round %d/%d: round trips", round+1, s.Rounds)
	for _, st := range order {
		p50, p99, err := roundTrips(st.Echo, s.RoundTrips, s.RoundTripLimit)
		if err != nil {
			r.fails[st.Key].add(fmt.Errorf("round trips: %w", err))
			continue
		}
		r.add(st, "rtt_p50", p50)
		r.add(st, "rtt_p99", p99)
	}
}

// holdMany opens ManyStreams idle streams at once on native, unless the
// descriptor limit could not be raised for them (noFileErr).
func (r *benchRun) holdMany(res *benchResource, noFileErr error) {
	native := r.setupByKey("native")
	switch {
	case noFileErr != nil:
		r.manySkipped = noFileErr.Error()
	case native == nil:
		r.manySkipped = "the native setup did not run"
	default:
		r.progress("native: %d idle streams at once", r.settings.ManyStreams)
		r.many = measureIdle(native, res, r.settings.ManyStreams, r.settings.IdleWorkers)
		r.progress("native: %d of %d opened, %d held, %d failures, %.1f KiB RSS per stream%s",
			r.many.Opened, r.many.Asked, r.many.Held, r.many.Fails.N, r.many.RSSKiB, lingerNote(r.many))
	}
}

// lingerNote is a sentence for streams that outlived their close.
func lingerNote(f *idleFigures) string {
	if f.Lingered == "" {
		return ""
	}
	return "; " + f.Lingered
}

func (r *benchRun) setupByKey(key string) *benchSetup {
	for _, s := range r.setups {
		if s.Key == key && s.Skipped == "" {
			return s
		}
	}
	return nil
}

// goBench is one result line of the Go benchmarks.
type goBench struct {
	Pkg         string  `json:"pkg"`
	Name        string  `json:"name"`
	N           int64   `json:"n"`
	NsPerOp     float64 `json:"ns_per_op"`
	BytesPerOp  float64 `json:"bytes_per_op"`
	AllocsPerOp float64 `json:"allocs_per_op"`
}

// runGoBenchmarks runs `go test -run '^$' -bench . -benchmem` on the
// packages of the wire codec, SAS verification and the stream handshake
// (GO names the go command, as the Makefile passes it) and parses its
// result lines.
func runGoBenchmarks(benchtime string) ([]goBench, error) {
	root, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	goTool := os.Getenv("GO")
	if goTool == "" {
		goTool = "go"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args := []string{"test", "-run", "^$", "-bench", ".", "-benchmem", "-count", "1", "-benchtime", benchtime,
		"./internal/wire", "./internal/sas", "./internal/relayclient"}
	cmd := exec.CommandContext(ctx, goTool, args...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %v\n%s", goTool, strings.Join(args, " "), err, out)
	}
	return parseGoBench(string(out)), nil
}

// parseGoBench reads `go test -bench -benchmem` output: "pkg:" lines name
// the package of the result lines that follow.
func parseGoBench(out string) []goBench {
	var res []goBench
	pkg := ""
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == "pkg:" {
			pkg = f[1]
			continue
		}
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		b := goBench{Pkg: pkg, Name: f[0]}
		b.N, _ = strconv.ParseInt(f[1], 10, 64)
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "ns/op":
				b.NsPerOp = v
			case "B/op":
				b.BytesPerOp = v
			case "allocs/op":
				b.AllocsPerOp = v
			}
		}
		res = append(res, b)
	}
	return res
}

// printGoBench prints the Go benchmarks as a table.
func printGoBench(bs []goBench) {
	sort.SliceStable(bs, func(i, j int) bool { return bs[i].Pkg < bs[j].Pkg })
	fmt.Printf("\n%-56s %12s %10s %10s\n", "Go benchmark (-benchmem)", "ns/op", "B/op", "allocs/op")
	for _, b := range bs {
		name := b.Name // BenchmarkX-2: the suffix is GOMAXPROCS
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		fmt.Printf("%-56s %12.0f %10.0f %10.0f\n", filepath.Base(b.Pkg)+"."+strings.TrimPrefix(name, "Benchmark"), b.NsPerOp, b.BytesPerOp, b.AllocsPerOp)
	}
	fmt.Println()
}

// describe says in a line what each round measures.
func (s benchSettings) describe() string {
	return fmt.Sprintf("%d round(s); per setup and round: throughput %d MiB per sample (at most %v), split over the streams; "+
		"%d connect+echo (at most %v); conn/s with %d workers for %v; %d round trips (at most %v); "+
		"memory: %d idle streams; %d at once on native",
		s.Rounds, s.TransferBytes>>20, s.TransferLimit, s.Connects, s.ConnectLimit, s.RateWorkers, s.RateTime,
		s.RoundTrips, s.RoundTripLimit, s.IdleStreams, s.ManyStreams)
}
