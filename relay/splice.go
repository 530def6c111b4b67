package relay

import (
	"context"
	"net"
	"time"

	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/internal/stream"
)

// activeStream is a stream being copied, as revocation needs to judge it.
type activeStream struct {
	id                          StreamID
	hc                          string
	joint                       *stream.Joint
	agentSession, senderSession *Session  // either may be nil
	foreignSession              SessionID // the sender's session on another relay of the fleet
	forwarded                   bool      // authorised by another relay, which judges rotation
	senderGrant, listenerGrant  Grant     // guarded by Core.mu
	senderKey                   string
	start                       time.Time
}

func (st *activeStream) cut() { st.joint.Close() }

// Splice tells both sides the stream is established and starts copying
// bytes between them; it returns at once (unless the sender's Serve runs
// its copy inline), and the stream's end is accounted for when it comes.
// It owns and closes both connections. Each direction's copy runs on its
// peer's Serve, or on a fresh goroutine, and a direction idle for a while
// holds none (see stream.Joint).
func (c *Core) Splice(pr *Pairing, sender Peer) {
	agent := pr.Agent
	joint := stream.NewJoint(sender.Conn, agent.Conn)
	st := &activeStream{id: pr.ID, hc: pr.HC, joint: joint, agentSession: pr.agentSession, senderSession: pr.senderSession,
		foreignSession: pr.foreignSession, forwarded: pr.forwarded,
		senderGrant: pr.senderGrant, listenerGrant: pr.listenerGrant, senderKey: pr.senderGrant.Rule, start: time.Now()}
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		pr.agentSession.addActive(-1)
		sender.Conn.Close()
		agent.abort()
		return
	}
	c.streams[st] = struct{}{}
	c.streamWG.Add(1)
	c.mu.Unlock()
	aborted := "" // why the stream ended before it started, if it did
	ended := func() {
		c.mu.Lock()
		delete(c.streams, st)
		c.mu.Unlock()
		pr.agentSession.addActive(-1)
		c.stats.BytesUp.Add(joint.AToB.Load())
		c.stats.BytesDown.Add(joint.BToA.Load())
		c.streamEnded(st, &sender, &agent, aborted)
		c.streamWG.Done()
	}
	started := false
	defer func() {
		if !started {
			ended()
		}
	}()

	fail := func(what string, err error) {
		c.log.Debug(what, "hc", pr.HC, "stream", pr.ID.String(), "error", err)
		c.stats.StreamsFailed.Add(1)
		aborted = what
		sender.Conn.Close()
		agent.abort()
	}
	// The agent hears first: it may start sending (a server greeting) as
	// soon as it knows; those bytes wait in the socket until the copy runs.
	if agent.Ready != nil {
		if err := agent.Ready(); err != nil {
			fail("agent side failed before the stream started", err)
			return
		}
	}
	if len(pr.early) > 0 && !agent.EarlySent {
		agent.Conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		_, err := agent.Conn.Write(pr.early)
		agent.Conn.SetWriteDeadline(time.Time{})
		if err != nil {
			fail("agent side failed before the stream started", err)
			return
		}
	}
	if sender.Ready != nil {
		if err := sender.Ready(); err != nil {
			fail("sender went away before the stream started", err)
			return
		}
	}
	c.stats.StreamsOpened.Add(1)
	c.streamStarted(st, sender.Addr, agent.Addr, len(pr.early))
	joint.OnDone(ended)
	started = true
	if agent.Serve != nil {
		agent.Serve(joint.CopyBToA)
	} else {
		go joint.CopyBToA()
	}
	if sender.Serve != nil {
		sender.Serve(joint.CopyAToB)
	} else {
		go joint.CopyAToB()
	}
}

// PassThrough copies between a client's connection and the peer connection
// carrying it whole to the relay of the fleet it belongs to (a join, a park
// or a rendezvous for a stream or session of that relay), until either
// ends. Shutdown treats it as a stream: it waits for it for the drain
// grace, then cuts it; except a parked connection that has carried nothing
// yet, which is closed at once (its agent parks another elsewhere).
func (c *Core) PassThrough(client, peer net.Conn, parked bool) {
	j := stream.NewJoint(client, peer)
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		client.Close()
		peer.Close()
		return
	}
	c.passes[j] = parked
	c.streamWG.Add(1)
	c.mu.Unlock()
	j.OnDone(func() {
		c.mu.Lock()
		delete(c.passes, j)
		c.mu.Unlock()
		c.streamWG.Done()
	})
	j.Start()
}

// SetAuth replaces the authentication rules. Every attachment and stream
// whose key rule, connection or right is gone, or whose key value was
// removed from a rule marked revoke, ends at once: revocation is immediate,
// not at token expiry. A value replaced while its rule stays is a rotation:
// what it authenticated lives on for the rotation grace, or for good once
// its client proves the rule's current value on its control channel.
func (c *Core) SetAuth(a *Auth) {
	c.auth.Store(&authState{Auth: a})
	c.sweep(time.Now())
}

// sweep ends every attachment and stream whose grant no longer holds:
// revoked ones at once, rotated ones past the grace; and every attachment
// whose token expired.
func (c *Core) sweep(now time.Time) {
	a := c.auth.Load().Auth
	grace := c.cfg.Load().RotationGrace
	// judge marks g rotated when it first finds it so, and says whether it
	// must end now, and why.
	judge := func(g *Grant) (bool, string) {
		switch a.judge(*g) {
		case revoked:
			return true, "key revoked or connection removed"
		case rotated:
			if g.Rotated.IsZero() {
				g.Rotated = now
			}
			if now.Sub(g.Rotated) >= grace {
				return true, "key rotated " + grace.String() + " ago and not proven since"
			}
		default:
			g.Rotated = time.Time{}
		}
		return false, ""
	}
	type lapse struct {
		s   *Session
		hc  string
		why *status.Error
	}
	type ending struct {
		st  *activeStream
		why string
	}
	var lapsed []lapse
	var cut []ending
	c.mu.Lock()
	for s := range c.sessions {
		s.mu.Lock()
		for hc, at := range s.attached {
			if end, why := judge(&at.grant); end {
				s.detachLocked(hc)
				lapsed = append(lapsed, lapse{s, hc, status.Errorf(status.Unauthorized, "%s", why)})
			} else if !at.grant.Expiry.IsZero() && !now.Before(at.grant.Expiry) {
				s.detachLocked(hc)
				lapsed = append(lapsed, lapse{s, hc, status.Errorf(status.Unauthorized, "token expired")})
			}
		}
		s.mu.Unlock()
	}
	for st := range c.streams {
		if st.forwarded {
			// The relay the sender is on judges rotation; revocation is
			// the same everywhere.
			if a.judge(st.senderGrant) == revoked {
				cut = append(cut, ending{st, "key revoked or connection removed"})
				continue
			}
		} else if end, why := judge(&st.senderGrant); end {
			cut = append(cut, ending{st, why})
			continue
		}
		if st.agentSession == nil {
			continue // carried to another relay: its listener grant is judged there
		}
		if end, why := judge(&st.listenerGrant); end {
			cut = append(cut, ending{st, why})
		}
	}
	c.mu.Unlock()
	for _, l := range lapsed {
		c.log.Warn("agent attachment ended", "hc", l.hc, "agent", l.s.name, "remote", l.s.remote, "reason", l.why.Msg)
		l.s.conn.Detached(l.hc, l.why)
		if l.s.attachedCount() == 0 {
			// Nothing it authenticated for is left: end the channel too.
			l.s.conn.Close(l.why)
		}
	}
	for _, e := range cut {
		c.log.Warn("stream ended", "hc", e.st.hc, "stream", e.st.id.String(), "reason", e.why,
			"sender_key", e.st.senderGrant.Rule, "listener_key", e.st.listenerGrant.Rule)
		e.st.cut()
	}
}

// Reprove applies a proof of a key on a sender session of another relay of
// the fleet to the streams that session opened here.
func (c *Core) Reprove(session SessionID, hc string, g Grant) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for st := range c.streams {
		if st.foreignSession == session && st.hc == hc {
			st.senderGrant = g
		}
	}
}

// RunExpiry sweeps every second until ctx is done: expired tokens detach
// their attachments (streams live on: as in Azure, a token is checked when
// a stream opens), and rotated grants past the grace end.
func (c *Core) RunExpiry(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			c.sweep(now)
		}
	}
}
