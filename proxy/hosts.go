package proxy

// Transparent hosts mode (proxy.hosts).
//
// For every connection whose endpoint is a host name (rules.Hosts.Maps), the
// proxy takes an address from the configured loopback range, listens there on
// the endpoint's own port, and maps the name to that address in a marked
// block of the hosts file:
//
//	# BEGIN hybrid-proxy hosts mode (managed by hybrid proxy; edits inside are overwritten)
//	127.77.41.7	pg.corp.local
//	# END hybrid-proxy hosts mode
//
// so `psql "host=pg.corp.local port=5432"` on the app's machine resolves the
// on-premises name to the proxy and works unchanged, for any client.
//
// Addresses are derived from the name alone (SHA-256 of the name, modulo the
// range's size), so they are the same on every start and on every machine;
// only a collision between two names moves the later one (in name order) to
// the next free address. The block is rewritten on every start (which repairs
// whatever a crash left behind), on every reload, and removed on a clean
// exit; the rest of the file is kept byte for byte. The listeners are plain
// mappings (listen address = derived address + endpoint port), so reload and
// shutdown are syncLocked's.

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hybridconn/hybrid/internal/safefile"
	"github.com/hybridconn/hybrid/rules"
)

// The lines that delimit the managed block. Only their prefixes are matched,
// so a future wording still recognises an older block.
const (
	hostsBeginPrefix = "# BEGIN hybrid-proxy"
	hostsEndPrefix   = "# END hybrid-proxy"
	hostsBegin       = hostsBeginPrefix + " hosts mode (managed by hybrid proxy; edits inside are overwritten)"
	hostsEnd         = hostsEndPrefix + " hosts mode"
)

// hostsEntry maps one on-premises name to the loopback address the proxy
// listens on for it.
type hostsEntry struct {
	Name string
	Addr netip.Addr
}

// hostsPlan is what hosts mode wants for one configuration: the block's
// entries (sorted by name) and the listeners (listen address -> connection).
type hostsPlan struct {
	file    string
	rng     netip.Prefix
	entries []hostsEntry
	listens map[string]*rules.ProxyConnection
}

// planHosts derives hosts mode's entries and listeners for cfg; nil when
// hosts mode is off.
func planHosts(cfg *rules.Proxy) (*hostsPlan, error) {
	h := cfg.Hosts
	if h == nil {
		return nil, nil
	}
	plan := &hostsPlan{file: h.File, rng: h.Range, listens: map[string]*rules.ProxyConnection{}}
	var names []string
	for i := range cfg.Connections {
		if name, _, ok := h.Maps(cfg.Connections[i].Endpoint); ok && !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	addrs, err := deriveAddrs(h.Range, names)
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		plan.entries = append(plan.entries, hostsEntry{Name: name, Addr: addrs[name]})
	}
	for i := range cfg.Connections {
		c := &cfg.Connections[i]
		if name, port, ok := h.Maps(c.Endpoint); ok {
			plan.listens[netip.AddrPortFrom(addrs[name], port).String()] = c
		}
	}
	return plan, nil
}

// deriveAddrs gives each name (sorted) its address in rng: the offset is the
// first 8 bytes of SHA-256(name) modulo the range's size; an offset that is
// taken (by an earlier name), the range's first or last address, or
// 127.0.0.1 moves on to the next one, wrapping around.
func deriveAddrs(rng netip.Prefix, names []string) (map[string]netip.Addr, error) {
	size := uint64(1) << (32 - rng.Bits())
	if usable := size - 2; uint64(len(names)) > usable {
		return nil, fmt.Errorf("proxy: hosts mode: %d names do not fit in range %s (%d usable addresses)", len(names), rng, usable)
	}
	base := binary.BigEndian.Uint32(rng.Addr().AsSlice())
	taken := map[netip.Addr]bool{netip.AddrFrom4([4]byte{127, 0, 0, 1}): true}
	out := make(map[string]netip.Addr, len(names))
	for _, name := range names {
		sum := sha256.Sum256([]byte(name))
		off := binary.BigEndian.Uint64(sum[:8]) % size
		for {
			var b [4]byte
			binary.BigEndian.PutUint32(b[:], base+uint32(off))
			a := netip.AddrFrom4(b)
			if off != 0 && off != size-1 && !taken[a] {
				taken[a] = true
				out[name] = a
				break
			}
			off = (off + 1) % size
		}
	}
	return out, nil
}

// isBlockLine reports whether line (with or without its newline) starts with
// prefix once leading blanks are ignored.
func isBlockLine(line, prefix string) bool {
	return strings.HasPrefix(strings.TrimLeft(line, " \t"), prefix)
}

// looksLikeEntry reports whether line is an entry hosts mode could have
// written: an address inside rng followed by one name.
func looksLikeEntry(line string, rng netip.Prefix) bool {
	f := strings.Fields(line)
	if len(f) != 2 {
		return false
	}
	a, err := netip.ParseAddr(f[0])
	return err == nil && rng.Contains(a)
}

// editHosts returns data with its managed block replaced by one holding
// entries (none: the block is removed), and every other byte kept. The new
// block goes where the first old one was, or at the end. Every old block is
// removed: a complete one (BEGIN to END) whole; one whose END is missing (a
// crash in the middle of an in-place write, a hand edit) as its BEGIN line
// and the entry-like lines right after it, nothing more. Stray END lines are
// dropped. shadowed lists the lines outside the block that map one of the
// names too: the resolver takes the first match in the file, so those may
// win over ours.
func editHosts(data []byte, entries []hostsEntry, rng netip.Prefix) (out []byte, shadowed []string) {
	lines := strings.SplitAfter(string(data), "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	names := map[string]bool{}
	for _, e := range entries {
		names[e.Name] = true
	}
	var kept []string
	insertAt := -1
	for i := 0; i < len(lines); {
		line := lines[i]
		switch {
		case isBlockLine(line, hostsBeginPrefix):
			if insertAt < 0 {
				insertAt = len(kept)
			}
			j := i + 1
			for j < len(lines) && !isBlockLine(lines[j], hostsEndPrefix) && !isBlockLine(lines[j], hostsBeginPrefix) {
				j++
			}
			if j < len(lines) && isBlockLine(lines[j], hostsEndPrefix) {
				i = j + 1
				continue
			}
			for i++; i < len(lines) && looksLikeEntry(lines[i], rng); i++ {
			}
		case isBlockLine(line, hostsEndPrefix):
			i++
		default:
			if f := strings.Fields(strings.SplitN(line, "#", 2)[0]); len(f) > 1 {
				for _, n := range f[1:] {
					if names[strings.TrimSuffix(strings.ToLower(n), ".")] {
						shadowed = append(shadowed, fmt.Sprintf("line %d: %s", i+1, strings.TrimSpace(line)))
						break
					}
				}
			}
			kept = append(kept, line)
			i++
		}
	}
	var block []string
	if len(entries) > 0 {
		block = append(block, hostsBegin+"\n")
		for _, e := range entries {
			block = append(block, e.Addr.String()+"\t"+e.Name+"\n")
		}
		block = append(block, hostsEnd+"\n")
	}
	if insertAt < 0 {
		insertAt = len(kept)
		if n := len(kept); n > 0 && len(block) > 0 && !strings.HasSuffix(kept[n-1], "\n") {
			kept[n-1] += "\n" // the block starts on a line of its own
		}
	}
	var b bytes.Buffer
	for _, l := range kept[:insertAt] {
		b.WriteString(l)
	}
	for _, l := range block {
		b.WriteString(l)
	}
	for _, l := range kept[insertAt:] {
		b.WriteString(l)
	}
	return b.Bytes(), shadowed
}

// maxHostsFile bounds what hosts mode reads: a hosts file is text of a few
// kilobytes; anything huge is not one.
const maxHostsFile = 16 << 20

// updateHostsFile makes the managed block of path hold entries (none: no
// block) and writes the file only when that changes it. inPlace reports that
// the file had to be rewritten in place (see writeHostsFile).
func updateHostsFile(path string, entries []hostsEntry, rng netip.Prefix) (changed, inPlace bool, shadowed []string, err error) {
	data, err := safefile.Read(path, maxHostsFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if len(entries) == 0 {
			return false, false, nil, nil
		}
		data = nil
	case errors.Is(err, safefile.ErrTooLarge):
		return false, false, nil, fmt.Errorf("proxy: hosts mode: %s is over %d bytes: not a hosts file", path, maxHostsFile)
	case err != nil:
		return false, false, nil, fmt.Errorf("proxy: hosts mode: %w", err)
	}
	out, shadowed := editHosts(data, entries, rng)
	if bytes.Equal(out, data) {
		return false, false, shadowed, nil
	}
	inPlace, err = writeHostsFile(path, out)
	if err != nil {
		return false, inPlace, shadowed, fmt.Errorf("proxy: hosts mode: %w", err)
	}
	return true, inPlace, shadowed, nil
}

// writeHostsFile replaces path's contents with data atomically: a temporary
// file beside it, with its mode and owner, synced, then renamed over it, so a
// reader sees the old file or the new one, never a mix. When the file is a
// mount point, rename cannot replace it (EBUSY): Docker and Kubernetes
// bind-mount /etc/hosts into containers, and the tests bind-mount a temporary
// file over it. Then (or when no temporary file can be made beside it) it is
// rewritten in place, never truncated to nothing first: the new bytes are
// written over the old ones, then the file is cut to length. inPlace reports
// that.
//
// A path that is a symbolic link (as /etc/hosts is on some distributions)
// is written through to its target: the link stays a link.
func writeHostsFile(path string, data []byte) (inPlace bool, err error) {
	if target, err := filepath.EvalSymlinks(path); err == nil {
		path = target
	}
	mode := fs.FileMode(0o644)
	uid, gid := -1, -1
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
		uid, gid = fileOwner(fi)
	}
	atomicErr := renameInto(path, data, mode, uid, gid)
	if atomicErr == nil {
		return false, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, mode)
	if err != nil {
		return true, errors.Join(atomicErr, err)
	}
	_, err = f.WriteAt(data, 0)
	if err == nil {
		err = f.Truncate(int64(len(data)))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return true, fmt.Errorf("rewrite %s in place: %w", path, err)
	}
	return true, nil
}

// renameInto writes data to a temporary file in path's directory and renames
// it over path.
func renameInto(path string, data []byte, mode fs.FileMode, uid, gid int) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".hybrid-*")
	if err != nil {
		return err
	}
	name := tmp.Name()
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if err == nil && uid >= 0 {
		if cerr := tmp.Chown(uid, gid); cerr != nil && !errors.Is(cerr, fs.ErrPermission) {
			err = cerr
		}
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(name, path)
	}
	if err != nil {
		os.Remove(name)
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() // make the rename durable; best effort
		d.Close()
	}
	return nil
}
