// Command dist packs the release directories `make dist` builds: every
// directory DIR/hybrid_<version>_<os>_<arch> becomes a .tar.gz (a .zip for
// windows) holding that directory, with every entry's time set to -mtime so
// the archives are reproducible; the directory is then removed, and
// DIR/SHA256SUMS lists every archive in `sha256sum` format.
package main

import (
	"archive/tar"
	"archive/zip"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

func main() {
	mtime := flag.Int64("mtime", 0, "unix time stamped on every archive entry (SOURCE_DATE_EPOCH)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: dist [-mtime UNIX] DIR")
		os.Exit(2)
	}
	if err := pack(flag.Arg(0), time.Unix(*mtime, 0).UTC()); err != nil {
		fmt.Fprintln(os.Stderr, "dist:", err)
		os.Exit(1)
	}
}

// pack archives every release directory of dir and writes SHA256SUMS.
func pack(dir string, mtime time.Time) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var sums []string
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "hybrid_") {
			continue
		}
		name := e.Name()
		archive := name + ".tar.gz"
		write := writeTarGz
		if strings.Contains(name, "_windows_") {
			archive, write = name+".zip", writeZip
		}
		path := filepath.Join(dir, archive)
		if err := write(path, dir, name, mtime); err != nil {
			return fmt.Errorf("%s: %w", archive, err)
		}
		if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
			return err
		}
		sum, err := sha256File(path)
		if err != nil {
			return err
		}
		sums = append(sums, sum+"  "+archive)
		fmt.Printf("dist: %s %s\n", archive, sum)
	}
	if len(sums) == 0 {
		return fmt.Errorf("no hybrid_* directories in %s", dir)
	}
	sort.Strings(sums)
	return os.WriteFile(filepath.Join(dir, "SHA256SUMS"), []byte(strings.Join(sums, "\n")+"\n"), 0o644)
}

// files lists the regular files under root/name, sorted, as slash paths
// relative to root.
func files(root, name string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(filepath.Join(root, name), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(root, p)
		out = append(out, filepath.ToSlash(rel))
		return err
	})
	sort.Strings(out)
	return out, err
}

// mode is an entry's permission: executables 0755, the rest 0644.
func mode(path string) int64 {
	base := filepath.Base(path)
	if base == "hybrid" || base == "hybrid.exe" {
		return 0o755
	}
	return 0o644
}

func writeTarGz(path, root, name string, mtime time.Time) error {
	list, err := files(root, name)
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	gz, _ := gzip.NewWriterLevel(f, gzip.BestCompression)
	gz.ModTime = mtime
	tw := tar.NewWriter(gz)
	for _, rel := range list {
		data, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: rel, Mode: mode(rel), Size: int64(len(data)), ModTime: mtime,
			Typeflag: tar.TypeReg, Format: tar.FormatPAX, Uname: "root", Gname: "root"}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := gz.Close(); err != nil {
		return err
	}
	return f.Close()
}

func writeZip(path, root, name string, mtime time.Time) error {
	list, err := files(root, name)
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	zw := zip.NewWriter(f)
	for _, rel := range list {
		data, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			return err
		}
		hdr := &zip.FileHeader{Name: rel, Method: zip.Deflate, Modified: mtime}
		hdr.SetMode(fs.FileMode(mode(rel)))
		w, err := zw.CreateHeader(hdr)
		if err != nil {
			return err
		}
		if _, err := w.Write(data); err != nil {
			return err
		}
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return f.Close()
}

func sha256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
