package events

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

func TestRing(t *testing.T) {
	ev := func(kind, remote, msg string) Event {
		return Event{Kind: kind, Source: "relay", HC: "pg", Remote: remote, Msg: msg}
	}
	type want struct {
		msg   string
		count int
	}
	tests := []struct {
		name string
		size int
		add  []Event
		want []want // newest first
	}{
		{"empty", 4, nil, nil},
		{"newest first", 4, []Event{ev(Denial, "a:1", "one"), ev(Refusal, "a:1", "two")},
			[]want{{"two", 1}, {"one", 1}}},
		{"oldest dropped", 2, []Event{ev(Denial, "", "one"), ev(Denial, "", "two"), ev(Denial, "", "three")},
			[]want{{"three", 1}, {"two", 1}}},
		{"repeats fold, any port", 2, []Event{ev(Denial, "10.0.0.1:1", "bad"), ev(Denial, "10.0.0.1:2", "bad"),
			ev(Denial, "10.0.0.1:3", "bad")}, []want{{"bad", 3}}},
		{"another host does not fold", 4, []Event{ev(Denial, "10.0.0.1:1", "bad"), ev(Denial, "10.0.0.2:1", "bad")},
			[]want{{"bad", 1}, {"bad", 1}}},
		{"only the newest folds", 4, []Event{ev(Denial, "", "a"), ev(Denial, "", "b"), ev(Denial, "", "a")},
			[]want{{"a", 1}, {"b", 1}, {"a", 1}}},
		{"default size", 0, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New(tt.size)
			for _, e := range tt.add {
				r.Add(e)
			}
			got := r.List()
			if len(got) != len(tt.want) {
				t.Fatalf("got %d events %+v, want %d", len(got), got, len(tt.want))
			}
			for i, w := range tt.want {
				if got[i].Msg != w.msg || got[i].Count != w.count || got[i].Time.IsZero() {
					t.Errorf("event %d = %+v, want msg %q count %d and a time", i, got[i], w.msg, w.count)
				}
			}
		})
	}
}

func TestRingBoundsMessagesAndNil(t *testing.T) {
	var nilRing *Ring
	nilRing.Add(Event{Msg: "x"}) // must not panic
	if nilRing.List() != nil {
		t.Fatal("a nil ring lists events")
	}
	r := New(1)
	r.Add(Event{Msg: strings.Repeat("x", 10000)})
	if got := len(r.List()[0].Msg); got > maxMsg+len("…") {
		t.Fatalf("message of %d bytes kept", got)
	}
}

func TestRingConcurrent(t *testing.T) {
	r := New(8)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				r.Add(Event{Kind: Refusal, Msg: fmt.Sprint(g, i)})
				r.List()
			}
		}()
	}
	wg.Wait()
	if n := len(r.List()); n != 8 {
		t.Fatalf("%d events held, want 8", n)
	}
}
