package relayclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/net/http/httpproxy"
)

// Option configures a Client.
type Option func(*options)

// WithProxy makes the client reach the relay through an HTTP CONNECT proxy:
// "http://host:port" or "https://host:port", with optional user:password.
// "" means: use HTTPS_PROXY (and NO_PROXY) from the environment, if set.
func WithProxy(proxyURL string) Option {
	return func(o *options) { o.proxyURL = proxyURL }
}

// proxyFor returns the proxy to reach addr through, or nil for a direct
// connection.
func (c *native) proxyFor(addr string) (*url.URL, error) {
	if c.proxyURL != "" {
		u, err := url.Parse(c.proxyURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("proxy_url %q: want http://host:port or https://host:port", c.proxyURL)
		}
		return u, nil
	}
	// Our channels are TLS or TLS-like long-lived TCP: HTTPS_PROXY is the
	// variable that governs them. NO_PROXY and loopback exclusions apply.
	return httpproxy.FromEnvironment().ProxyFunc()(&url.URL{Scheme: "https", Host: addr})
}

// dialProxy opens a tunnel to addr through the HTTP CONNECT proxy p.
func (c *native) dialProxy(ctx context.Context, p *url.URL, addr string) (net.Conn, error) {
	paddr := p.Host
	if p.Port() == "" {
		if p.Scheme == "https" {
			paddr = net.JoinHostPort(p.Hostname(), "443")
		} else {
			paddr = net.JoinHostPort(p.Hostname(), "80")
		}
	}
	conn, err := c.dialTCP(ctx, "tcp", paddr)
	if err != nil {
		return nil, fmt.Errorf("proxy %s: %w", paddr, err)
	}
	if p.Scheme == "https" {
		tc := tls.Client(conn, &tls.Config{ServerName: p.Hostname(), MinVersion: tls.VersionTLS12})
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, fmt.Errorf("proxy %s: tls: %w", paddr, err)
		}
		conn = tc
	}
	deadline := time.Now().Add(HandshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	req := "CONNECT " + addr + " HTTP/1.1\r\nHost: " + addr + "\r\n"
	if u := p.User; u != nil {
		pw, _ := u.Password()
		req += "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+pw)) + "\r\n"
	}
	req += "\r\n"
	if _, err := conn.Write([]byte(req)); err != nil {
		conn.Close()
		return nil, fmt.Errorf("proxy %s: %w", paddr, err)
	}
	// Read the answer one byte at a time up to the blank line: bytes after
	// it belong to the tunnel and must not be swallowed by a buffer.
	head, err := readHead(conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("proxy %s: reading CONNECT answer: %w", paddr, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(head)), nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("proxy %s: bad CONNECT answer: %w", paddr, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		conn.Close()
		return nil, fmt.Errorf("proxy %s refused CONNECT %s: %s", paddr, addr, resp.Status)
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

// readHead reads an HTTP response head, through its blank line, and no more.
func readHead(conn net.Conn) (string, error) {
	var b strings.Builder
	one := make([]byte, 1)
	for !strings.HasSuffix(b.String(), "\r\n\r\n") {
		if b.Len() > 16<<10 {
			return "", errors.New("response head over 16 KiB")
		}
		if _, err := conn.Read(one); err != nil {
			return "", err
		}
		b.WriteByte(one[0])
	}
	return b.String(), nil
}
