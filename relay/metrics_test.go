package relay

import (
	"bytes"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/admin"
	"github.com/hybridconn/hybrid/internal/events"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/internal/stream"
	"github.com/hybridconn/hybrid/rules"
)

// syncBuffer is a bytes.Buffer safe for a logger and a test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startObservedRelay is startRelay with its metrics, status and events on
// an Admin, its log in a buffer, and no wait for agents (opens without a
// listener fail at once).
func startObservedRelay(t *testing.T) (*testRelay, *admin.Admin, *syncBuffer) {
	t.Helper()
	ad := admin.New()
	logs := &syncBuffer{}
	log := hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Info})
	r := serveTestRelay(t, log, func(s *Server) {
		s.core.SetConfig(Config{ListenerWait: -1})
		s.Register(ad)
	}, nil)
	return r, ad, logs
}

// waitValue waits until the series reaches at least want.
func waitValue(t *testing.T, ad *admin.Admin, want float64, name string, labels ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, _ := ad.Value(name, labels...)
		if v >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v, want at least %v", name, labels, v, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestMetricsPerConnection: streams, bytes (while the stream runs),
// failures by reason and setup times are labelled by connection; names
// outside the config count as "other"; listeners are 0 for a connection
// no agent serves.
func TestMetricsPerConnection(t *testing.T) {
	r, ad, logs := startObservedRelay(t)
	want := func(v float64, name string, labels ...string) {
		t.Helper()
		got, ok := ad.Value(name, labels...)
		if !ok || got != v {
			t.Errorf("%s%v = %v (present %v), want %v", name, labels, got, ok, v)
		}
	}
	want(0, "hybrid_relay_listeners", "hc", "pg")
	want(0, "hybrid_relay_listeners", "hc", "other")
	want(0, "hybrid_relay_streams_opened_total", "hc", "pg")
	want(0, "hybrid_relay_stream_bytes_total", "hc", "pg", "direction", "up")

	startAgent(t, r, "pg", echo)
	want(1, "hybrid_relay_listeners", "hc", "pg")
	want(0, "hybrid_relay_listeners", "hc", "other")

	c, err := open(r, "pg", "apps", sendKey, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// 3 MiB each way while the stream stays open: counted before it ends.
	const n = 3 << 20
	go c.Write(make([]byte, n))
	if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	waitValue(t, ad, 2<<20, "hybrid_relay_stream_bytes_total", "hc", "pg", "direction", "up")
	waitValue(t, ad, 2<<20, "hybrid_relay_stream_bytes_total", "hc", "pg", "direction", "down")
	want(1, "hybrid_relay_streams_active", "hc", "pg")
	want(1, "hybrid_relay_streams_opened_total", "hc", "pg")
	// The first status read has no earlier sample: the live stream's
	// average since it started stands for the throughput.
	for _, cs := range r.srv.Status().Connections {
		if cs.Name == "pg" && (cs.RateUp <= 0 || cs.RateDown <= 0 || cs.BytesUp < 2<<20) {
			t.Errorf("pg's throughput on a first read: %+v", cs)
		}
	}
	want(1, "hybrid_relay_stream_setup_seconds", "hc", "pg")
	c.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, c)
	waitValue(t, ad, n, "hybrid_relay_stream_bytes_total", "hc", "pg", "direction", "up")
	waitValue(t, ad, n, "hybrid_relay_stream_bytes_total", "hc", "pg", "direction", "down")

	failures := []struct {
		name, hc, keyName, key string
		label, reason          string
	}{
		{"wrong key", "pg", "apps", "not-the-key", "pg", "unauthorized"},
		{"listen key to send", "pg", "onprem", listenKey, "pg", "forbidden"},
		{"no agent", "other", "apps", sendKey, "other", "no_listener"},
		{"unknown name", "nope", "apps", sendKey, "other", "not_found"},
	}
	for _, f := range failures {
		t.Run(f.name, func(t *testing.T) {
			if c, err := open(r, f.hc, f.keyName, f.key, ""); err == nil {
				c.Close()
				t.Fatal("opened")
			}
			want(1, "hybrid_relay_streams_failed_total", "hc", f.label, "reason", f.reason)
		})
	}
	// The access line of the stream, with its bytes and a human duration.
	line := regexp.MustCompile(`\[INFO\]  stream closed: hc=pg stream=[0-9a-f]{32} sender=127\.0\.0\.1:\d+ sender_key=apps ` +
		`agent=test agent_addr=127\.0\.0\.1:\d+ bytes_up=3145728 bytes_down=3145728 duration=\d+(\.\d+)?m?s result=ok`)
	deadline := time.Now().Add(5 * time.Second)
	for !line.MatchString(logs.String()) {
		if time.Now().After(deadline) {
			t.Fatalf("no access line matching %v in:\n%s", line, logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Denials and refusals are in the events ring.
	kinds := map[string]bool{}
	for _, e := range ad.Events().List() {
		kinds[e.Kind+" "+e.Reason] = true
	}
	for _, k := range []string{events.Denial + " unauthorized", events.Denial + " forbidden", events.Denial + " not_found",
		events.Refusal + " no_listener"} {
		if !kinds[k] {
			t.Errorf("no %q event in %v", k, ad.Events().List())
		}
	}
}

// TestStatusAndReadiness: the status shows every configured connection,
// one without an agent as such, the live stream with its sender; the relay
// is ready only when every connection has an agent.
func TestStatusAndReadiness(t *testing.T) {
	r, _, _ := startObservedRelay(t)
	if ok, why := r.srv.Ready(); ok || why != "no agent listening for other, pg" {
		t.Fatalf("Ready() = %v, %q before any agent", ok, why)
	}
	startAgent(t, r, "pg", echo)
	c, err := open(r, "pg", "apps", sendKey, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hi"))
	io.ReadFull(c, make([]byte, 2))
	st := r.srv.Status()
	conns := map[string]ConnectionStatus{}
	for _, cs := range st.Connections {
		conns[cs.Name] = cs
	}
	if cs := conns["other"]; cs.Name == "" || cs.Listeners != 0 || len(cs.Agents) != 0 {
		t.Errorf("other: %+v, want listed with no listener", cs)
	}
	if cs := conns["pg"]; cs.Listeners != 1 || strings.Join(cs.Agents, ",") != "test" || cs.StreamsActive != 1 {
		t.Errorf("pg: %+v, want agent test and one stream", cs)
	}
	if len(st.Streams) != 1 || st.Streams[0].HC != "pg" || st.Streams[0].Agent != "test" ||
		st.Streams[0].SenderKey != "apps" || !strings.HasPrefix(st.Streams[0].Sender, "127.0.0.1:") {
		t.Errorf("streams %+v", st.Streams)
	}
	if len(st.Agents) != 1 || st.Agents[0].Transport != "tcp" {
		t.Errorf("agents %+v", st.Agents)
	}
	if ok, why := r.srv.Ready(); ok || why != "no agent listening for other" {
		t.Fatalf("Ready() = %v, %q with an agent for pg only", ok, why)
	}
	startAgent(t, r, "other", echo)
	if ok, why := r.srv.Ready(); !ok || why != "every connection (2) has an agent listening" {
		t.Fatalf("Ready() = %v, %q with both served", ok, why)
	}
	if ok, why := r.srv.Serving(); !ok || why != "serving" {
		t.Fatalf("Serving() = %v, %q", ok, why)
	}
	r.srv.core.GoAway(status.Errorf(status.ShuttingDown, "test"))
	if ok, why := r.srv.Serving(); ok || !strings.HasPrefix(why, "stopping") {
		t.Fatalf("Serving() = %v, %q once stopping", ok, why)
	}
}

// TestThroughput: rates come from byte totals at least minRateWindow
// apart, never negative.
func TestThroughput(t *testing.T) {
	var o observer
	t0 := time.Unix(1000, 0)
	steps := []struct {
		at    time.Duration
		up    int64
		wantR float64
		want  bool
	}{
		{0, 0, 0, false},
		{time.Second, 5000, 0, false}, // too soon: nothing yet
		{4 * time.Second, 8000, 2000, true},
		{5 * time.Second, 9000, 2000, true}, // too soon: the last rate
		{8 * time.Second, 4000, 0, true},    // a total that went back (a reload relabelled): 0, not negative
	}
	for _, s := range steps {
		r := o.throughput(t0.Add(s.at), map[string][2]int64{"pg": {s.up, 0}})
		got, ok := r["pg"]
		if ok != s.want || got[0] != s.wantR {
			t.Errorf("at %v: rate %v (%v), want %v (%v)", s.at, got, ok, s.wantR, s.want)
		}
	}
}

// remoteFleet is a fleet in which another relay has agents for some
// connections.
type remoteFleet struct {
	Fleet  // the rest is not called
	remote map[string]bool
}

func (f remoteFleet) HasRemote(hc string) bool { return f.remote[hc] }
func (f remoteFleet) Changed()                 {}
func (f remoteFleet) Status() FleetStatus {
	return FleetStatus{ID: "relay-a", Directory: true, Relays: 1}
}

// TestReadinessInAFleet: a connection whose agent listens at another relay
// of the fleet is served from here too: ready, and not shown as unserved.
func TestReadinessInAFleet(t *testing.T) {
	r := serveTestRelay(t, hclog.NewNullLogger(), func(s *Server) {
		s.SetFleet(remoteFleet{remote: map[string]bool{"other": true}}, [4]byte{1, 2, 3, 4})
	}, nil)
	if ok, why := r.srv.Ready(); ok || why != "no agent listening for pg" {
		t.Fatalf("Ready() = %v, %q", ok, why)
	}
	for _, cs := range r.srv.Status().Connections {
		if want := cs.Name == "other"; cs.Remote != want {
			t.Errorf("%s: Remote %v, want %v", cs.Name, cs.Remote, want)
		}
	}
	startAgent(t, r, "pg", echo)
	if ok, why := r.srv.Ready(); !ok || why != "every connection (2) has an agent listening" {
		t.Fatalf("Ready() = %v, %q", ok, why)
	}
}

// BenchmarkObserve measures a status read and a scrape with 1000 live
// streams (go test -bench Observe ./relay): both walk every live stream
// under the core's lock.
func BenchmarkObserve(b *testing.B) {
	keys := []rules.Key{{Name: "apps", Rights: []string{"send"}, Primary: sendKey}}
	cfg := &rules.Relay{Namespace: ns, Connections: []rules.RelayConnection{{Name: "pg", Keys: keys}, {Name: "other", Keys: keys}}}
	srv, err := New(cfg, hclog.NewNullLogger())
	if err != nil {
		b.Fatal(err)
	}
	ad := admin.New()
	srv.Register(ad)
	for i := 0; i < 1000; i++ {
		a, z := net.Pipe()
		defer a.Close()
		defer z.Close()
		st := &activeStream{hc: []string{"pg", "other"}[i%2], joint: stream.NewJoint(a, z), start: time.Now()}
		st.joint.AToB.Store(int64(i) << 20)
		srv.core.streams[st] = struct{}{}
	}
	b.Run("status", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			srv.Status()
		}
	})
	b.Run("scrape", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			ad.Value("hybrid_relay_stream_bytes_total", "hc", "pg")
		}
	})
}
