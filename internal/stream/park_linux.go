package stream

import (
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// A half's parking states.
const (
	running int32 = iota // its goroutine copies or waits
	parked               // no goroutine: the parker takes it up when readable
	closing              // taken back to be closed: ends
)

// parkState is a half's place with the parker.
type parkState struct {
	state atomic.Int32
	id    uint64 // key in the parker's table, given at the first park
	added bool   // the socket is in the parker's epoll set (the half's goroutine only)
}

// parker holds idle halves without goroutines: their sockets sit in an
// epoll set of its own (Go's poller has its own, and would need a goroutine
// per waiting socket), and one goroutine, for the life of the process,
// waits on it and starts a half's goroutine again when its socket is
// readable or ended.
type parker struct {
	once   sync.Once
	ok     bool
	epfd   int
	mu     sync.Mutex
	next   uint64
	halves map[uint64]*half

	// Returning memory after a burst (guarded by mu): see releaseLocked.
	sinceRelease int
	lastRelease  time.Time
	releasing    bool
}

// After a burst of streams gone idle, the goroutines that copied them have
// ended, but their stacks stay with the process until a collection frees
// them and the runtime's scavenger, slowly, gives the pages back: the
// process keeps the burst's peak (a container's memory limit counts it).
// So once releaseAfter halves have parked, and at most every releaseEvery,
// the parker hands the memory back releaseDelay after the burst.
const (
	releaseAfter = 1024
	releaseEvery = 30 * time.Second
	releaseDelay = time.Second
)

// releaseLocked counts a park and schedules the release when due.
func (p *parker) releaseLocked() {
	p.sinceRelease++
	if p.releasing || p.sinceRelease < releaseAfter || time.Since(p.lastRelease) < releaseEvery {
		return
	}
	p.releasing = true
	time.AfterFunc(releaseDelay, func() {
		debug.FreeOSMemory()
		p.mu.Lock()
		p.releasing, p.sinceRelease, p.lastRelease = false, 0, time.Now()
		p.mu.Unlock()
	})
}

var idle parker

// parkingAvailable reports whether idle halves can be parked (the epoll set
// exists).
func parkingAvailable() bool {
	idle.once.Do(func() {
		fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return
		}
		idle.epfd, idle.ok, idle.halves = fd, true, map[uint64]*half{}
		go idle.loop()
	})
	return idle.ok
}

// loop wakes parked halves: each goes on, on a new goroutine.
func (p *parker) loop() {
	evs := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(p.epfd, evs, -1)
		if err != nil {
			if err != unix.EINTR {
				time.Sleep(10 * time.Millisecond) // cannot happen on a valid set; do not spin
			}
			continue
		}
		for _, ev := range evs[:n] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			p.mu.Lock()
			h := p.halves[id]
			delete(p.halves, id)
			p.mu.Unlock()
			if h != nil && h.park.state.CompareAndSwap(parked, running) {
				go h.run()
			}
		}
	}
}

// parkIdle hands the half to the parker, which starts it again when its
// socket is readable (one-shot: each park arms it once). It reports
// whether the half is no longer this goroutine's: parked, or taken back
// meanwhile to be closed.
func (h *half) parkIdle() bool {
	if !parkingAvailable() {
		return false
	}
	p, st := &idle, &h.park
	p.mu.Lock()
	if st.id == 0 {
		p.next++
		st.id = p.next
	}
	p.halves[st.id] = h
	p.mu.Unlock()
	st.state.Store(parked)
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT,
		Fd: int32(uint32(st.id)), Pad: int32(uint32(st.id >> 32))}
	var cerr error
	// Control holds the socket open: it cannot be closed, and its number
	// reused, while it is added.
	err := h.rc.Control(func(fd uintptr) {
		if st.added {
			cerr = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, int(fd), &ev)
			if cerr != unix.ENOENT {
				return
			}
		}
		if cerr = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev); cerr == nil {
			st.added = true
		}
	})
	if err == nil {
		err = cerr
	}
	if err == nil {
		p.mu.Lock()
		p.releaseLocked()
		p.mu.Unlock()
		return true
	}
	p.mu.Lock()
	delete(p.halves, st.id)
	p.mu.Unlock()
	// Not parked (the socket is closed, say): go on here, unless
	// unparkToClose took the half meanwhile.
	return !st.state.CompareAndSwap(parked, running)
}

// unparkToClose takes a parked half back before its socket is closed, and
// reports whether it did: the caller then ends it.
func (h *half) unparkToClose() bool {
	st := &h.park
	if !st.state.CompareAndSwap(parked, closing) {
		return false
	}
	idle.mu.Lock()
	delete(idle.halves, st.id)
	idle.mu.Unlock()
	h.rc.Control(func(fd uintptr) {
		unix.EpollCtl(idle.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	})
	return true
}
