package integration

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"debug/macho"
	"debug/pe"
	"encoding/hex"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// gitOut runs git in the module root and returns its trimmed output.
func gitOut(t *testing.T, args ...string) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	needProgram(t, "git", "git")
	out, code := runCmd(t, time.Minute, "git", append([]string{"-C", root}, args...)...)
	if code != 0 {
		t.Fatalf("git %s: exit %d: %s", strings.Join(args, " "), code, out)
	}
	return strings.TrimSpace(out)
}

// runMake runs make with args in the module root and fails the test on a
// non-zero exit.
func runMake(t *testing.T, args ...string) {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	needProgram(t, "make", "make")
	if out, code := runCmd(t, 15*time.Minute, "make", append([]string{"-C", root}, args...)...); code != 0 {
		t.Fatalf("make %s: exit %d:\n%s", strings.Join(args, " "), code, out)
	}
}

// TestMakeBuildStamps: a plain `make build` stamps the version (git
// describe) and the full commit from git, whatever Go's own VCS stamping
// does (it is turned off here with -buildvcs=false, as some environments
// do); `hybrid version` and `hybrid --version` print them.
func TestMakeBuildStamps(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "hybrid")
	t.Setenv("GOFLAGS", "-buildvcs=false")
	runMake(t, "build", "BIN="+bin)
	want := "hybrid " + gitOut(t, "describe", "--tags", "--always", "--dirty") +
		" (commit " + gitOut(t, "rev-parse", "HEAD") + ", " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH + ")"
	for _, arg := range []string{"version", "--version"} {
		out, code := runCmd(t, 30*time.Second, bin, arg)
		if code != 0 || strings.TrimSpace(out) != want {
			t.Errorf("hybrid %s: exit %d, %q; want %q", arg, code, out, want)
		}
	}
}

// TestMakeDist: `make dist` cross-compiles every release target (static,
// CGO_ENABLED=0) into an archive with the right binary format and
// architecture, and SHA256SUMS matches the archives; the linux/amd64 binary
// (on such a host) prints the stamped version and commit.
func TestMakeDist(t *testing.T) {
	dir := t.TempDir()
	const version = "v0.0.0-disttest"
	runMake(t, "dist", "DIST="+dir, "VERSION="+version)
	commit := gitOut(t, "rev-parse", "HEAD")

	sums := readSums(t, filepath.Join(dir, "SHA256SUMS"))
	targets := []struct {
		archive, binary string
		check           func(t *testing.T, path string)
	}{
		{"hybrid_" + version + "_linux_amd64.tar.gz", "hybrid", elfArch(elf.EM_X86_64)},
		{"hybrid_" + version + "_linux_arm64.tar.gz", "hybrid", elfArch(elf.EM_AARCH64)},
		{"hybrid_" + version + "_darwin_arm64.tar.gz", "hybrid", func(t *testing.T, path string) {
			f, err := macho.Open(path)
			if err != nil {
				t.Fatalf("not a Mach-O binary: %v", err)
			}
			defer f.Close()
			if f.Cpu != macho.CpuArm64 {
				t.Errorf("Mach-O for %v, want arm64", f.Cpu)
			}
		}},
		{"hybrid_" + version + "_windows_amd64.zip", "hybrid.exe", func(t *testing.T, path string) {
			f, err := pe.Open(path)
			if err != nil {
				t.Fatalf("not a PE binary: %v", err)
			}
			defer f.Close()
			if f.Machine != pe.IMAGE_FILE_MACHINE_AMD64 {
				t.Errorf("PE for machine %#x, want amd64", f.Machine)
			}
		}},
	}
	if len(sums) != len(targets) {
		t.Errorf("SHA256SUMS lists %d archives, want %d: %v", len(sums), len(targets), sums)
	}
	for _, tt := range targets {
		t.Run(tt.archive, func(t *testing.T) {
			path := filepath.Join(dir, tt.archive)
			if got := fileSHA256Hex(t, path); sums[tt.archive] != got {
				t.Errorf("SHA256SUMS says %q, the file hashes to %s", sums[tt.archive], got)
			}
			top := strings.TrimSuffix(strings.TrimSuffix(tt.archive, ".zip"), ".tar.gz")
			files := extract(t, path, filepath.Join(t.TempDir(), "x"))
			for _, want := range []string{top + "/" + tt.binary, top + "/README.md", top + "/hybrid.yaml", top + "/docs/configuration.md"} {
				if files[want] == "" {
					t.Errorf("archive lacks %s (has %v)", want, files)
				}
			}
			bin := files[top+"/"+tt.binary]
			if bin == "" {
				return
			}
			tt.check(t, bin)
			if strings.Contains(tt.archive, "_"+runtime.GOOS+"_"+runtime.GOARCH+".") {
				out, code := runCmd(t, 30*time.Second, bin, "version")
				if want := "hybrid " + version + " (commit " + commit + ", "; code != 0 || !strings.HasPrefix(out, want) {
					t.Errorf("hybrid version: exit %d, %q; want it to start %q", code, out, want)
				}
			}
		})
	}
}

func elfArch(m elf.Machine) func(*testing.T, string) {
	return func(t *testing.T, path string) {
		f, err := elf.Open(path)
		if err != nil {
			t.Fatalf("not an ELF binary: %v", err)
		}
		defer f.Close()
		if f.Machine != m {
			t.Errorf("ELF for %v, want %v", f.Machine, m)
		}
		// Static: no interpreter (CGO_ENABLED=0).
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("ELF has an interpreter: not a static binary")
			}
		}
	}
}

// readSums parses a SHA256SUMS file into archive name -> hex digest.
func readSums(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok || len(sum) != 64 {
			t.Fatalf("SHA256SUMS: bad line %q", sc.Text())
		}
		out[name] = sum
	}
	return out
}

func fileSHA256Hex(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// extract unpacks a .tar.gz or .zip into dir and returns archive path ->
// extracted file path, for regular files.
func extract(t *testing.T, archive, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	save := func(name string, mode os.FileMode, r io.Reader) {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if !strings.HasPrefix(p, dir+string(filepath.Separator)) {
			t.Fatalf("archive entry %q escapes", name)
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(f, r); err != nil {
			t.Fatal(err)
		}
		f.Close()
		out[name] = p
	}
	if strings.HasSuffix(archive, ".zip") {
		zr, err := zip.OpenReader(archive)
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		for _, f := range zr.File {
			rc, err := f.Open()
			if err != nil {
				t.Fatal(err)
			}
			save(f.Name, f.Mode().Perm(), rc)
			rc.Close()
		}
		return out
	}
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			save(h.Name, os.FileMode(h.Mode).Perm(), tr)
		}
	}
}

// TestMakeRunBusyPort: `make run` stops at once, naming the port, when one
// of the demo's fixed ports is taken (here the demo resource's 8081),
// instead of carrying on with a tunnel to nothing.
func TestMakeRunBusyPort(t *testing.T) {
	if ln, err := net.Listen("tcp", "127.0.0.1:8081"); err == nil {
		defer ln.Close()
	} // else it is taken already, which is what the test needs
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	needProgram(t, "make", "make")
	out, code := runCmd(t, 5*time.Minute, "make", "-C", root, "run", "BIN="+filepath.Join(t.TempDir(), "hybrid"))
	if code == 0 || !strings.Contains(out, "127.0.0.1:8081 is not free") || strings.Contains(out, "relay listening") {
		t.Fatalf("make run with 127.0.0.1:8081 taken: exit %d, want a failure naming the port before anything starts:\n%s", code, out)
	}
}
