package main

import (
	"archive/tar"
	"archive/zip"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPack: release directories become archives with the files at fixed
// times, the directories go, SHA256SUMS lists them; packing twice gives
// the same bytes.
func TestPack(t *testing.T) {
	build := func() string {
		dir := t.TempDir()
		for _, d := range []string{"hybrid_v1_linux_amd64", "hybrid_v1_windows_amd64"} {
			os.MkdirAll(filepath.Join(dir, d, "docs"), 0o755)
			bin := "hybrid"
			if strings.Contains(d, "windows") {
				bin = "hybrid.exe"
			}
			os.WriteFile(filepath.Join(dir, d, bin), []byte("binary"), 0o755)
			os.WriteFile(filepath.Join(dir, d, "README.md"), []byte("readme"), 0o644)
			os.WriteFile(filepath.Join(dir, d, "docs", "configuration.md"), []byte("conf"), 0o644)
		}
		if err := pack(dir, time.Unix(1700000000, 0)); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	a, b := build(), build()
	for _, name := range []string{"hybrid_v1_linux_amd64.tar.gz", "hybrid_v1_windows_amd64.zip", "SHA256SUMS"} {
		x, err1 := os.ReadFile(filepath.Join(a, name))
		y, err2 := os.ReadFile(filepath.Join(b, name))
		if err1 != nil || err2 != nil || string(x) != string(y) {
			t.Fatalf("%s missing or not reproducible (%v %v)", name, err1, err2)
		}
	}
	if _, err := os.Stat(filepath.Join(a, "hybrid_v1_linux_amd64")); !os.IsNotExist(err) {
		t.Fatal("release directory left behind")
	}
	sums, _ := os.ReadFile(filepath.Join(a, "SHA256SUMS"))
	if n := strings.Count(string(sums), "\n"); n != 2 {
		t.Fatalf("SHA256SUMS:\n%s", sums)
	}

	f, _ := os.Open(filepath.Join(a, "hybrid_v1_linux_amd64.tar.gz"))
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var names []string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, h.Name)
		if h.Name == "hybrid_v1_linux_amd64/hybrid" && h.Mode != 0o755 {
			t.Fatalf("binary mode %o", h.Mode)
		}
		if !h.ModTime.Equal(time.Unix(1700000000, 0)) {
			t.Fatalf("%s mtime %v", h.Name, h.ModTime)
		}
	}
	if strings.Join(names, ",") != "hybrid_v1_linux_amd64/README.md,hybrid_v1_linux_amd64/docs/configuration.md,hybrid_v1_linux_amd64/hybrid" {
		t.Fatalf("tar entries %v", names)
	}
	zr, err := zip.OpenReader(filepath.Join(a, "hybrid_v1_windows_amd64.zip"))
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	if len(zr.File) != 3 || zr.File[2].Name != "hybrid_v1_windows_amd64/hybrid.exe" {
		t.Fatalf("zip entries %v", zr.File)
	}
}
