package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// instruction is one Dockerfile instruction: its keyword (upper case) and
// its arguments, continuation lines joined.
type instruction struct {
	cmd, args string
	line      int
}

// parseDockerfile splits a Dockerfile into instructions: comments and blank
// lines dropped, backslash continuations joined (comment lines inside a
// continuation skipped, as Docker does).
func parseDockerfile(src string) []instruction {
	var out []instruction
	var cur strings.Builder
	start := 0
	for i, l := range strings.Split(src, "\n") {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		cont := strings.HasSuffix(t, "\\")
		cur.WriteString(strings.TrimSuffix(t, "\\"))
		cur.WriteByte(' ')
		if cont {
			continue
		}
		cmd, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		out = append(out, instruction{strings.ToUpper(cmd), strings.Join(strings.Fields(args), " "), start})
		cur.Reset()
	}
	return out
}

// TestDockerfile checks the Dockerfile without a Docker engine (none runs
// here): a multi-stage build whose build stage is named and compiles a
// static binary (CGO_ENABLED=0) stamped with version and commit, with the
// Go version go.mod asks for; a final stage on distroless static (or
// scratch) that copies only the binary from the build stage, runs as a
// non-root user and has the binary as its exec-form ENTRYPOINT; and a
// .dockerignore that keeps .git, bin and dist out of the context.
func TestDockerfile(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	ins := parseDockerfile(read("Dockerfile"))

	// Stages.
	var froms []instruction
	args := map[string]string{} // ARG defaults before the first FROM
	for _, in := range ins {
		switch {
		case in.cmd == "FROM":
			froms = append(froms, in)
		case in.cmd == "ARG" && len(froms) == 0:
			k, v, _ := strings.Cut(in.args, "=")
			args[k] = v
		}
	}
	if len(froms) < 2 {
		t.Fatalf("%d FROM lines: want a multi-stage build", len(froms))
	}
	buildFrom := regexp.MustCompile(`(?i)^golang:(\S+?)(-\S+)? AS build$`).FindStringSubmatch(froms[0].args)
	if buildFrom == nil {
		t.Fatalf("line %d: first stage %q: want FROM golang:<version>[-variant] AS build", froms[0].line, froms[0].args)
	}
	goVersion := strings.NewReplacer("${GO_VERSION}", args["GO_VERSION"], "$GO_VERSION", args["GO_VERSION"]).Replace(buildFrom[1])
	if m := regexp.MustCompile(`(?m)^go (\S+)$`).FindStringSubmatch(read("go.mod")); m == nil || goVersion != m[1] {
		t.Errorf("the build stage uses Go %q, go.mod says %v: keep them equal (GO_VERSION)", goVersion, m)
	}
	final := froms[len(froms)-1]
	if !regexp.MustCompile(`^(gcr\.io/distroless/static(-debian\d+)?(:\S+)?|scratch)$`).MatchString(final.args) {
		t.Errorf("line %d: final stage FROM %q: want gcr.io/distroless/static or scratch", final.line, final.args)
	}

	// The build stage's go build.
	var build string
	for _, in := range ins {
		if in.line > froms[0].line && in.line < final.line && in.cmd == "RUN" && strings.Contains(in.args, "go build") {
			build = in.args
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "internal/buildinfo.Version=${VERSION}", "internal/buildinfo.Commit=${COMMIT}", "./cmd/hybrid"} {
		if !strings.Contains(build, want) {
			t.Errorf("the build stage's go build (%q) lacks %q", build, want)
		}
	}

	// The final stage.
	var user, entry string
	copies := 0
	for _, in := range ins {
		if in.line < final.line {
			continue
		}
		switch in.cmd {
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entry = in.args
		case "COPY":
			copies++
			if !strings.HasPrefix(in.args, "--from=build ") {
				t.Errorf("line %d: COPY %s: the final stage should take only the binary from the build stage", in.line, in.args)
			}
		case "RUN":
			t.Errorf("line %d: RUN in the final stage: distroless has no shell", in.line)
		}
	}
	if name, _, _ := strings.Cut(user, ":"); user == "" || name == "root" || name == "0" {
		t.Errorf("final stage USER %q: want a non-root user", user)
	}
	var argv []string
	if err := json.Unmarshal([]byte(entry), &argv); err != nil || len(argv) == 0 || !strings.HasSuffix(argv[0], "/hybrid") {
		t.Errorf("ENTRYPOINT %s: want the exec form [\".../hybrid\"]", entry)
	}
	if copies != 1 {
		t.Errorf("final stage has %d COPY lines, want 1 (the binary)", copies)
	}

	ignore := map[string]bool{}
	for _, l := range strings.Split(read(".dockerignore"), "\n") {
		ignore[strings.TrimSpace(l)] = true
	}
	for _, want := range []string{".git", "bin", "dist"} {
		if !ignore[want] {
			t.Errorf(".dockerignore does not exclude %s", want)
		}
	}
}

func TestParseDockerfile(t *testing.T) {
	got := parseDockerfile("# c\nFROM a AS b\n\nRUN x \\\n  # inside\n  y\nUSER  u:g\n")
	want := []instruction{{"FROM", "a AS b", 2}, {"RUN", "x y", 4}, {"USER", "u:g", 7}}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("instruction %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}
