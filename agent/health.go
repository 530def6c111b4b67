package agent

import (
	"context"
	"net"
	"time"

	"github.com/hybridconn/hybrid/rules"
)

// endpointHealth is what the agent knows of one published endpoint: a dial
// that fails marks it unhealthy (the relays then route its connection's
// streams to other agents while any is healthy) and starts a check that
// dials it until it answers again. With a connection's health_check set,
// the check runs all the time.
type endpointHealth struct {
	endpoint string
	healthy  bool
	why      string
	cancel   context.CancelFunc // the running check, or nil
	always   bool               // health_check configured
}

// healthOf returns whether hc's endpoint is reachable, and why not.
func (a *Agent) healthOf(hc string) (bool, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	h := a.health[hc]
	if h == nil {
		return true, ""
	}
	return h.healthy, h.why
}

// syncHealthLocked starts the checks of connections with health_check, and
// forgets connections that are gone or changed endpoint.
func (a *Agent) syncHealthLocked(cfg *rules.Agent) {
	want := map[string]rules.AgentConnection{}
	for _, c := range cfg.Connections {
		want[c.Name] = c
	}
	for hc, h := range a.health {
		if c, ok := want[hc]; !ok || c.Endpoint != h.endpoint || (c.HealthCheck != nil) != h.always {
			if h.cancel != nil {
				h.cancel()
			}
			delete(a.health, hc)
		}
	}
	for hc, c := range want {
		if c.HealthCheck != nil && a.health[hc] == nil {
			h := &endpointHealth{endpoint: c.Endpoint, healthy: true, always: true}
			a.health[hc] = h
			a.startCheckLocked(hc, h, c.HealthCheck)
		}
	}
}

// endpointFailed records a failed dial to hc's endpoint.
func (a *Agent) endpointFailed(hc, endpoint, why string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	h := a.health[hc]
	if h == nil {
		h = &endpointHealth{endpoint: endpoint, healthy: true}
		a.health[hc] = h
	}
	if h.healthy {
		h.healthy, h.why = false, why
		a.log.Warn("endpoint unreachable; reported to the relays until it answers again", "hc", hc, "endpoint", endpoint)
		a.notifyLocked()
	}
	if h.cancel == nil && a.runCtx != nil {
		a.startCheckLocked(hc, h, a.checkOf(hc))
	}
}

// endpointOK records a successful dial to hc's endpoint.
func (a *Agent) endpointOK(hc string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if h := a.health[hc]; h != nil && !h.healthy {
		a.setHealthyLocked(hc, h)
	}
}

func (a *Agent) setHealthyLocked(hc string, h *endpointHealth) {
	h.healthy, h.why = true, ""
	if h.cancel != nil && !h.always {
		h.cancel()
		h.cancel = nil
	}
	a.log.Info("endpoint reachable again", "hc", hc, "endpoint", h.endpoint)
	a.notifyLocked()
}

func (a *Agent) checkOf(hc string) *rules.HealthCheck {
	for _, c := range a.cfg.Load().Connections {
		if c.Name == hc && c.HealthCheck != nil {
			return c.HealthCheck
		}
	}
	return &rules.HealthCheck{Interval: rules.DefaultHealthInterval, Timeout: rules.DefaultHealthTimeout}
}

// startCheckLocked dials h's endpoint every interval until the agent stops
// (or, without health_check, until it answers).
func (a *Agent) startCheckLocked(hc string, h *endpointHealth, hcfg *rules.HealthCheck) {
	ctx, cancel := context.WithCancel(a.runCtx)
	h.cancel = cancel
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		t := time.NewTicker(hcfg.Interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			d := net.Dialer{Timeout: hcfg.Timeout}
			c, err := d.DialContext(ctx, "tcp", h.endpoint)
			if ctx.Err() != nil {
				return
			}
			a.mu.Lock()
			if a.health[hc] != h {
				a.mu.Unlock()
				return
			}
			switch {
			case err == nil && !h.healthy:
				a.setHealthyLocked(hc, h)
			case err != nil && h.healthy:
				h.healthy, h.why = false, describeDialError(h.endpoint, err)
				a.log.Warn("health check failed; reported to the relays", "hc", hc, "endpoint", h.endpoint, "error", h.why)
				a.notifyLocked()
			}
			done := h.cancel == nil
			a.mu.Unlock()
			if c != nil {
				c.Close()
			}
			if done {
				return
			}
		}
	}()
}
