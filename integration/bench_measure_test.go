//go:build bench

package integration

// The measures of make bench, each a function of an address: the same
// code measures the resource directly and through every setup.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const (
	// benchDialTimeout bounds every connect of the bench, and
	// benchIOTimeout every exchange on a connection: generous, since a
	// loaded 2-core machine stalls, and a figure past them is no figure.
	benchDialTimeout = 10 * time.Second
	benchIOTimeout   = time.Minute
	// benchWarm connections or round trips come before each timed
	// series, uncounted: pools fill, code paths are hot.
	benchWarm = 20
)

// tally counts failures and keeps the first, for the report.
type tally struct {
	mu    sync.Mutex
	N     int    `json:"n"`
	First string `json:"first,omitempty"`
}

func (t *tally) add(err error) {
	if err == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.N == 0 {
		t.First = err.Error()
	}
	t.N++
}

func (t *tally) merge(o *tally) {
	o.mu.Lock()
	n, first := o.N, o.First
	o.mu.Unlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.N == 0 {
		t.First = first
	}
	t.N += n
}

// benchDial connects to addr, with benchIOTimeout for what follows.
func benchDial(addr string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, benchDialTimeout)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(benchIOTimeout))
	return c, nil
}

// connectEcho is one app connection as the latency and rate figures count
// it: connect, one byte out, the byte back, close.
func connectEcho(addr string) error {
	c, err := benchDial(addr)
	if err != nil {
		return err
	}
	b := [1]byte{'x'}
	if _, err := c.Write(b[:]); err != nil {
		c.Close()
		return fmt.Errorf("write: %w", err)
	}
	if _, err := io.ReadFull(c, b[:]); err != nil {
		c.Close()
		return fmt.Errorf("read the echo: %w", err)
	}
	return c.Close()
}

// connectLatency times n connectEchoes one after the other, or as many
// as limit allows, and returns their p50 and p99 in µs, ok when any
// succeeded; failures are not timed.
func connectLatency(addr string, n int, limit time.Duration, fails *tally) (p50, p99 float64, ok bool) {
	for i := 0; i < benchWarm; i++ {
		fails.add(connectEcho(addr))
	}
	ds := make([]time.Duration, 0, n)
	for i, end := 0, time.Now().Add(limit); i < n && time.Now().Before(end); i++ {
		start := time.Now()
		if err := connectEcho(addr); err != nil {
			fails.add(err)
			continue
		}
		ds = append(ds, time.Since(start))
	}
	return benchP(ds, 50), benchP(ds, 99), len(ds) > 0
}

// connRate runs workers, each doing connectEcho back to back until d has
// passed, and returns the completed ones per second of the wall time.
func connRate(addr string, workers int, d time.Duration, fails *tally) float64 {
	var done atomic.Int64
	start := time.Now()
	end := start.Add(d)
	parallel(workers, func(int) {
		for time.Now().Before(end) {
			if err := connectEcho(addr); err != nil {
				fails.add(err)
				continue
			}
			done.Add(1)
		}
	})
	return float64(done.Load()) / time.Since(start).Seconds()
}

// parallel runs f(0), …, f(n-1), each in a goroutine of its own, and
// waits for them all.
func parallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(i)
		}()
	}
	wg.Wait()
}

// roundTrips times n 1-byte round trips on one established connection to
// the echo, or as many as limit allows, and returns their p50 and p99 in
// µs.
func roundTrips(addr string, n int, limit time.Duration) (p50, p99 float64, err error) {
	c, err := benchDial(addr)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	b := []byte{'r'}
	ds := make([]time.Duration, 0, n)
	end := time.Now().Add(limit)
	for i := 0; i < benchWarm+n && (i < benchWarm || time.Now().Before(end)); i++ {
		start := time.Now()
		if _, err := c.Write(b); err != nil {
			return 0, 0, fmt.Errorf("round trip %d: write: %w", i, err)
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return 0, 0, fmt.Errorf("round trip %d: read: %w", i, err)
		}
		if i >= benchWarm {
			ds = append(ds, time.Since(start))
		}
	}
	return benchP(ds, 50), benchP(ds, 99), nil
}

// transfer moves total bytes through the blast at addr, split over streams
// concurrent connections, downloading (dir 'Z') or uploading ('U'); a
// stream stops at limit even short of its share. It returns Gbit/s: the
// bytes through over the wall time from the first connect to the last
// stream's end (for an upload, the blast's word that it has all).
func transfer(addr string, dir byte, streams int, total int64, limit time.Duration) (float64, error) {
	var moved atomic.Int64
	errs := make([]error, streams)
	start := time.Now()
	stop := start.Add(limit)
	parallel(streams, func(i int) {
		n, err := transferOne(addr, dir, total/int64(streams), stop)
		moved.Add(n)
		errs[i] = err
	})
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	return float64(moved.Load()) * 8 / time.Since(start).Seconds() / 1e9, nil
}

// transferOne is one stream of transfer: n bytes, or fewer at stop.
func transferOne(addr string, dir byte, n int64, stop time.Time) (int64, error) {
	c, err := benchDial(addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if _, err := c.Write([]byte{dir}); err != nil {
		return 0, err
	}
	var done int64
	if dir == 'Z' {
		buf := make([]byte, benchChunk)
		for done < n && time.Now().Before(stop) {
			m, err := c.Read(buf[:min(int64(len(buf)), n-done)])
			done += int64(m)
			if err != nil {
				return done, fmt.Errorf("download after %d bytes: %w", done, err)
			}
		}
		return done, nil
	}
	frame := make([]byte, 4+benchChunk)
	for done < n && time.Now().Before(stop) {
		m := min(int64(benchChunk), n-done)
		binary.BigEndian.PutUint32(frame, uint32(m))
		if _, err := c.Write(frame[:4+m]); err != nil {
			return done, fmt.Errorf("upload after %d bytes: %w", done, err)
		}
		done += m
	}
	if _, err := c.Write(make([]byte, 4)); err != nil {
		return done, fmt.Errorf("upload end: %w", err)
	}
	if _, err := io.ReadFull(c, frame[:1]); err != nil {
		return done, fmt.Errorf("upload of %d bytes: no word from the blast: %w", done, err)
	}
	return done, nil
}

// openIdle opens n streams to the echo at addr, workers at a time, each
// proven end to end by one echoed byte and then left idle. It returns the
// streams that opened.
func openIdle(addr string, n, workers int, fails *tally) []net.Conn {
	var mu sync.Mutex
	conns := make([]net.Conn, 0, n)
	work := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		work <- struct{}{}
	}
	close(work)
	parallel(workers, func(int) {
		for range work {
			c, err := benchDial(addr)
			if err == nil {
				if err = echoByte(c); err != nil {
					c.Close()
				}
			}
			if err != nil {
				fails.add(err)
				continue
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	return conns
}

// echoByte sends one byte on c and reads it back.
func echoByte(c net.Conn) error {
	c.SetDeadline(time.Now().Add(benchIOTimeout))
	defer c.SetDeadline(time.Time{})
	b := []byte{'i'}
	if _, err := c.Write(b); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if _, err := io.ReadFull(c, b); err != nil {
		return fmt.Errorf("read the echo: %w", err)
	}
	return nil
}

// checkIdle echoes one byte on each of conns again, workers at a time:
// the streams were held.
func checkIdle(conns []net.Conn, workers int, fails *tally) {
	work := make(chan net.Conn, len(conns))
	for _, c := range conns {
		work <- c
	}
	close(work)
	parallel(workers, func(int) {
		for c := range work {
			fails.add(echoByte(c))
		}
	})
}

// idleFigures is what an idle-stream phase measured for one setup.
type idleFigures struct {
	Asked  int `json:"asked"`  // streams asked for
	Opened int `json:"opened"` // streams that opened end to end
	Held   int `json:"held"`   // of those, still echoing after all had opened
	// RSSKiB is the growth of the setup's processes' summed VmRSS per
	// open stream; 0 for direct (no process between).
	RSSKiB float64 `json:"rss_kib_per_stream"`
	// KernelKiB is the growth of the kernel's slab (/proc/meminfo Slab)
	// per open stream: every socket and pipe of the stream end to end,
	// the client's and the resource's sockets included.
	KernelKiB float64 `json:"kernel_kib_per_stream"`
	// FDs and Sockets are the growth of the processes' descriptors, and
	// of those that are sockets, per open stream (the rest are mostly
	// splice pipes, two descriptors each).
	FDs     float64 `json:"fds_per_stream"`
	Sockets float64 `json:"sockets_per_stream"`
	Fails   tally   `json:"failures"`
	// Lingered, when set, says the streams were not all gone 30 s after
	// they were closed.
	Lingered string `json:"lingered,omitempty"`
}

// measureIdle opens n idle streams through s (workers at a time), reads
// the memory and descriptors of s's processes and the kernel's slab
// before and after, checks that every stream still echoes, closes them
// and waits until they are gone at the resource and the processes hold no
// more sockets than before (give or take their pools).
// idleSettle is how long streams are held with no byte before their memory
// is read: an idle stream is one an app keeps open and unused (a pooled
// database connection), not one that just carried its first byte — hybrid
// parks a stream's copies after a second of silence (stream.IdleAfter).
const idleSettle = 3 * time.Second

func measureIdle(s *benchSetup, res *benchResource, n, workers int) *idleFigures {
	f := &idleFigures{Asked: n}
	base := res.active()
	fds0, socks0 := descriptors(s.pids())
	rss0 := rssSum(s.pids())
	slab0 := meminfoKiB("Slab")
	conns := openIdle(s.Echo, n, workers, &f.Fails)
	time.Sleep(idleSettle)
	rss1 := rssSum(s.pids())
	slab1 := meminfoKiB("Slab")
	fds1, socks1 := descriptors(s.pids())
	f.Opened = len(conns)
	var held tally
	checkIdle(conns, workers, &held)
	f.Held = f.Opened - held.N
	f.Fails.merge(&held)
	if f.Opened > 0 {
		per := func(d int64) float64 { return float64(d) / float64(f.Opened) }
		if len(s.procs) > 0 {
			f.RSSKiB = per(rss1 - rss0)
			f.FDs, f.Sockets = per(int64(fds1-fds0)), per(int64(socks1-socks0))
		}
		f.KernelKiB = per(slab1 - slab0)
	}
	for _, c := range conns {
		c.Close()
	}
	// The pools of parked and warm connections may have grown meanwhile:
	// a few hundred sockets more are not streams left behind. (Pipes are
	// not counted: Go keeps its splice pipes pooled until a GC.)
	const slack = 256
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, socks := descriptors(s.pids())
		if res.active() <= base && socks <= socks0+slack {
			break
		}
		if time.Now().After(deadline) {
			f.Lingered = fmt.Sprintf("30 s after closing: %d connections open at the resource (%d before), %d sockets in the processes (%d before)",
				res.active(), base, socks, socks0)
			break
		}
		time.Sleep(pollInterval)
	}
	return f
}

// rssSum is the VmRSS of pids summed, in KiB; a process that is gone
// counts nothing.
func rssSum(pids []int) int64 {
	var sum int64
	for _, pid := range pids {
		sum += procStatusKiB(pid, "VmRSS:")
	}
	return sum
}

// procStatusKiB is a KiB field of /proc/pid/status, or 0.
func procStatusKiB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	return kibField(string(b), field)
}

// meminfoKiB is a field of /proc/meminfo in KiB, or 0.
func meminfoKiB(field string) int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	return kibField(string(b), field+":")
}

// kibField finds "field <n> kB" in a /proc text.
func kibField(text, field string) int64 {
	for _, l := range strings.Split(text, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == field {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return 0
}

// descriptors counts the open descriptors of pids, and of those the
// sockets.
func descriptors(pids []int) (fds, sockets int) {
	for _, pid := range pids {
		dir := fmt.Sprintf("/proc/%d/fd", pid)
		es, _ := os.ReadDir(dir)
		fds += len(es)
		for _, e := range es {
			if l, err := os.Readlink(dir + "/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:") {
				sockets++
			}
		}
	}
	return fds, sockets
}

// raiseNoFile lifts this process's RLIMIT_NOFILE to at least need, soft
// and hard, and puts the old one back when the test ends. The children
// inherit it: each holds two descriptors per idle stream, and the hybrid
// binary, like every Go program, raises its soft limit to the hard one at
// start. Raising the hard limit needs CAP_SYS_RESOURCE (root has it on a
// CI machine, not in every sandbox); otherwise the error says what the
// limit is.
func raiseNoFile(t *testing.T, need uint64) error {
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	if old.Cur >= need {
		return nil
	}
	lim := syscall.Rlimit{Cur: need, Max: max(need, old.Max)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		if old.Max >= need {
			return fmt.Errorf("setrlimit: %w", err)
		}
		return fmt.Errorf("RLIMIT_NOFILE's hard limit is %d, %d needed, and raising it failed (%w): it needs CAP_SYS_RESOURCE (root on a CI machine); raise it before make bench (ulimit -Hn)", old.Max, need, err)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
	return nil
}

// benchP is the p-th percentile of ds in µs (0 for none).
func benchP(ds []time.Duration, p float64) float64 {
	return float64(durPercentile(ds, p).Nanoseconds()) / 1e3
}
