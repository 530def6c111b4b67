// Package statuspage renders a process's status page: the same document as
// /status (relay, agent and proxy sections, config reloads, recent events)
// as server-rendered HTML with embedded CSS and a little JavaScript that
// refreshes it in place. No build chain: html/template and embed.
package statuspage

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"strings"
	"time"

	"github.com/hybridconn/hybrid/agent"
	"github.com/hybridconn/hybrid/internal/admin"
	"github.com/hybridconn/hybrid/internal/events"
	"github.com/hybridconn/hybrid/proxy"
	"github.com/hybridconn/hybrid/relay"
)

//go:embed assets
var assets embed.FS

// RefreshSeconds is how often the page refreshes itself.
const RefreshSeconds = 5

var page = template.Must(template.New("page.html").Funcs(template.FuncMap{
	"bytes": humanBytes,
	"rate":  humanRate,
	"ago":   ago,
	"dur":   Duration,
	"join":  strings.Join,
	"first": func(s string, n int) string {
		if len(s) > n {
			return s[:n]
		}
		return s
	},
}).ParseFS(assets, "assets/page.html"))

// View is what the page shows: one process's status document.
type View struct {
	Version string
	Uptime  time.Duration
	Now     time.Time
	Ready   bool
	Checks  []admin.Check
	Relay   *relay.Status
	Agent   *agent.Status
	Proxy   *proxy.Status
	Config  map[string]any
	Events  []events.Event
	Refresh int
}

// ViewOf builds the view of a's status document.
func ViewOf(a *admin.Admin) View {
	doc := a.Status()
	v := View{Now: time.Now(), Refresh: RefreshSeconds}
	v.Ready, v.Checks = a.Ready()
	v.Version, _ = doc["version"].(string)
	if s, ok := doc["uptime_seconds"].(int64); ok {
		v.Uptime = time.Duration(s) * time.Second
	}
	if s, ok := doc["relay"].(relay.Status); ok {
		v.Relay = &s
	}
	if s, ok := doc["agent"].(agent.Status); ok {
		v.Agent = &s
	}
	if s, ok := doc["proxy"].(proxy.Status); ok {
		v.Proxy = &s
	}
	v.Config, _ = doc["config"].(map[string]any)
	v.Events, _ = doc["events"].([]events.Event)
	return v
}

// New returns the handler of the page (GET /) and its assets (GET
// /ui/...), for admin.SetPage.
func New(a *admin.Admin) http.Handler {
	static, _ := fs.Sub(assets, "assets")
	files := http.StripPrefix("/ui/", http.FileServer(http.FS(static)))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// No inline script or style, nothing from elsewhere.
		w.Header().Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Cache-Control", "no-store")
		if strings.HasPrefix(r.URL.Path, "/ui/") {
			files.ServeHTTP(w, r)
			return
		}
		var buf bytes.Buffer
		if err := page.Execute(&buf, ViewOf(a)); err != nil {
			http.Error(w, "status page: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(buf.Bytes())
	})
}

// humanBytes writes n in binary units: 512 B, 1.5 KiB, 3.2 GiB.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// humanRate writes bytes per second, "–" for nothing.
func humanRate(r float64) string {
	if r < 1 {
		return "–"
	}
	return humanBytes(int64(r)) + "/s"
}

// ago writes how long before now t was (a time.Time or an RFC 3339
// string), in two units at most: "45s", "3m12s", "2h05m", "3d4h".
func ago(now time.Time, t any) string {
	switch t := t.(type) {
	case time.Time:
		return Duration(now.Sub(t))
	case string:
		p, err := time.Parse(time.RFC3339, t)
		if err != nil {
			return t
		}
		return Duration(now.Sub(p))
	}
	return fmt.Sprint(t)
}

// Duration writes d in two units at most: "45s", "3m12s", "2h05m",
// "3d4h"; negative durations (clock skew) as "0s".
func Duration(d time.Duration) string {
	s := int64(d / time.Second)
	switch {
	case s <= 0:
		return "0s"
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	}
	return fmt.Sprintf("%dd%dh", s/86400, s%86400/3600)
}
