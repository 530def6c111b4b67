package meter

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestLabel(t *testing.T) {
	known := func(hc string) bool { return hc == "pg" }
	for _, tt := range []struct{ hc, want string }{{"pg", "pg"}, {"PG", Other}, {"", Other}, {"x", Other}} {
		if got := Label(tt.hc, known); got != tt.want {
			t.Errorf("Label(%q) = %q, want %q", tt.hc, got, tt.want)
		}
	}
}

// TestBytesNeverGoBack: a stream missed between its removal from the live
// set and Finish does not make the counter go back; finished totals and
// live counts add up.
func TestBytesNeverGoBack(t *testing.T) {
	var b Bytes
	steps := []struct {
		name     string
		finish   int64 // bytes finished before this scrape
		live     int64 // bytes live streams show at the scrape
		wantUp   int64
		configed []string
	}{
		{"idle configured", 0, 0, 0, []string{"pg"}},
		{"one live stream", 0, 100, 100, nil},
		{"ended, not yet finished", 0, 0, 100, nil},
		{"finished", 120, 0, 120, nil},
		{"another live", 0, 30, 150, nil},
	}
	var finished int64
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if s.finish > 0 {
				b.Finish("pg", s.finish, 0)
				finished += s.finish
			}
			totals := b.Finished()
			if s.live > 0 {
				Add(totals, "pg", s.live, 0)
			}
			desc := prometheus.NewDesc("x_bytes_total", "x", []string{"hc", "direction"}, nil)
			ch := make(chan prometheus.Metric, 10)
			b.Emit(ch, desc, totals, s.configed)
			close(ch)
			var up float64
			n := 0
			for m := range ch {
				var d dto.Metric
				m.Write(&d)
				n++
				for _, l := range d.GetLabel() {
					if l.GetName() == "direction" && l.GetValue() == Up {
						up = d.GetCounter().GetValue()
					}
				}
			}
			if n != 2 || int64(up) != s.wantUp {
				t.Fatalf("%d series, up = %v, want 2 and %d", n, up, s.wantUp)
			}
		})
	}
}
