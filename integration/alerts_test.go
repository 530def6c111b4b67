package integration

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/testenv"
)

// TestAlertRules checks deploy/prometheus/alerts.yaml with Prometheus's own
// promtool (Debian package prometheus): the rules parse, and each alert
// fires when its unit test (alerts_test.yaml) says, and only then. That the
// metrics they use are exported is checked against running roles in
// TestE2EStatusAndMetrics.
func TestAlertRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		testenv.SkipOrFail(t, "promtool not found (Debian package prometheus; see .ci/run)")
	}
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "deploy", "prometheus")
	for _, tt := range []struct {
		name string
		args []string
	}{
		{"check rules", []string{"check", "rules", "alerts.yaml"}},
		{"test rules", []string{"test", "rules", "alerts_test.yaml"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(promtool, tt.args...)
			cmd.Dir = dir
			cmd.WaitDelay = 30 * time.Second
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "SUCCESS") {
				t.Fatalf("promtool %s: %v\n%s", strings.Join(tt.args, " "), err, out)
			}
		})
	}
}
