package integration

// HTTP mode end to end: curl (any HTTP client, with nothing but a send
// token) through the relay to an on-prem HTTP API published by the agent;
// and Microsoft's hyco-https listener behind the relay binary.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/nodetest"
)

// onpremAPI is the published HTTP API: it answers what it saw.
func onpremAPI(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Api", "on-prem")
		json.NewEncoder(w).Encode(map[string]any{"method": r.Method, "uri": r.URL.RequestURI(), "host": r.Host,
			"authorization": r.Header.Get("Authorization"), "bytes": n, "sha256": hex.EncodeToString(h.Sum(nil))})
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestE2EHTTPModeCurl(t *testing.T) {
	needTools(t, "curl")
	api := onpremAPI(t)
	apiAddr := api.Listener.Addr().String()
	tun := startTunnel(t, tunnelOpts{HCs: []hcDef{{Name: "api", Endpoint: "http://" + apiAddr + "/v1"}, {Name: "nobody"}}})
	tok := e2eToken("api", "apps", tun.Keys["api"].Apps)
	base := fmt.Sprintf("http://127.0.0.1:%d", tun.HTTP)

	curl := func(args ...string) (string, int) {
		t.Helper()
		return runCmd(t, 60*time.Second, "curl", append([]string{"-sS", "--max-time", "30"}, args...)...)
	}
	var seen struct {
		Method, URI, Host, Authorization, Sha256 string
		Bytes                                    int64
	}
	out, code := curl("-H", "ServiceBusAuthorization: "+tok, "-H", "Authorization: Bearer app-token", base+"/api/orders/42?x=1")
	if code != 0 || json.Unmarshal([]byte(out), &seen) != nil || seen.URI != "/v1/orders/42?x=1" || seen.Host != apiAddr || seen.Authorization != "Bearer app-token" {
		t.Fatalf("curl GET: exit %d, %s", code, out)
	}
	// 1 MiB up: more than the control channel takes, so over a rendezvous.
	body := filepath.Join(t.TempDir(), "body")
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	os.WriteFile(body, data, 0o644)
	sum := sha256.Sum256(data)
	out, code = curl("--data-binary", "@"+body, base+"/api/upload?sb-hc-token="+url.QueryEscape(tok))
	if code != 0 || json.Unmarshal([]byte(out), &seen) != nil || seen.Bytes != 1<<20 || seen.Sha256 != hex.EncodeToString(sum[:]) || seen.Method != "POST" {
		t.Fatalf("curl POST 1 MiB: exit %d, %s", code, out)
	}
	// Headers: the relay's Via, the API's own.
	out, _ = curl("-D", "-", "-o", "/dev/null", "-H", "ServiceBusAuthorization: "+tok, base+"/api/h")
	if !strings.Contains(out, "Via: 1.1 "+e2eNamespace) || !strings.Contains(out, "X-Api: on-prem") || !strings.HasPrefix(out, "HTTP/1.1 200") {
		t.Fatalf("response headers:\n%s", out)
	}
	// Refusals, as status codes.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{base + "/api/x"}, "401"},
		{[]string{"-H", "ServiceBusAuthorization: " + e2eToken("nobody", "apps", tun.Keys["nobody"].Apps), base + "/nobody/x"}, "502"},
		{[]string{"-H", "ServiceBusAuthorization: " + tok, base + "/nosuch/x"}, "404"},
	} {
		out, _ := curl(append([]string{"-o", "/dev/null", "-w", "%{http_code}"}, tc.args...)...)
		if out != tc.want {
			t.Fatalf("curl %v: %s, want %s", tc.args, out, tc.want)
		}
	}
	e2eWaitAudit(t, tun.Audit, "the upload", 10*time.Second, func(l auditLine) bool {
		return l.Event == "http" && l.Method == "POST" && l.Path == "/api/upload" && l.Status == 200 && l.BytesIn == 1<<20 && l.BytesOut > 0
	})
}

// TestE2EHTTPModeHycoHTTPS: Microsoft's hyco-https listener behind the relay
// binary, curl as the sender, both ways over 64 KiB.
func TestE2EHTTPModeHycoHTTPS(t *testing.T) {
	needTools(t, "curl")
	node, modules := nodetest.Install(t, nodetest.HycoHTTPS)
	tun := &tunnel{Dir: t.TempDir(), HCs: []hcDef{{Name: "hyco"}}, Keys: map[string]hcKeys{"hyco": {Apps: e2eKey(t), Onprem: e2eKey(t)}}}
	tun.startRelay(t) // the relay alone: the listener is Microsoft's
	script, _ := filepath.Abs("../relay/testdata/hycohttps.js")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := nodetest.Command(ctx, node, modules, script,
		fmt.Sprintf("ws://127.0.0.1:%d/$hc/hyco?sb-hc-action=listen", tun.HTTP), e2eToken("hyco", "onprem", tun.Keys["hyco"].Onprem))
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cancel()
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case ready <- sc.Text():
			default:
			}
		}
	}()
	select {
	case l := <-ready:
		if l != "LISTENING" {
			t.Fatalf("hyco-https: %s", l)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("hyco-https did not listen")
	}
	tok := e2eToken("hyco", "apps", tun.Keys["hyco"].Apps)
	base := fmt.Sprintf("http://127.0.0.1:%d/hyco", tun.HTTP)
	body := filepath.Join(t.TempDir(), "body")
	os.WriteFile(body, make([]byte, 200_000), 0o644)
	out, code := runCmd(t, 60*time.Second, "curl", "-sS", "--max-time", "30", "-H", "ServiceBusAuthorization: "+tok, "--data-binary", "@"+body, base+"/echo?q=1")
	var seen struct {
		Method, URL string
		BodyLen     int `json:"bodyLen"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &seen) != nil || seen.Method != "POST" || seen.URL != "/hyco/echo?q=1" || seen.BodyLen != 200_000 {
		t.Fatalf("curl to hyco-https: exit %d, %s", code, out)
	}
	out, code = runCmd(t, 60*time.Second, "curl", "-sS", "--max-time", "30", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
		"-H", "ServiceBusAuthorization: "+tok, base+"/big")
	if code != 0 || out != "200 1048576" {
		t.Fatalf("1 MiB from hyco-https: exit %d, %s", code, out)
	}
}
