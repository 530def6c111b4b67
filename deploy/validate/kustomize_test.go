package validate

import (
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// kustomizeBuild runs kustomize (the library kubectl apply -k embeds) over
// the folder, in memory, with the test's values in the generated Secrets'
// files, and checks that what it makes is what the other checks looked at:
// every resource, in the kustomization's namespace, and the generated
// Secrets under their own names, each decoded strictly again.
func (b *bundle) kustomizeBuild(t *testing.T) {
	fs := filesys.MakeFsInMemory()
	const top = "/k"
	err := filepath.WalkDir(b.dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(b.dir, p)
		if strings.HasPrefix(rel, "secrets"+string(filepath.Separator)) {
			return nil // not in git; made below
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return fs.WriteFile(path.Join(top, filepath.ToSlash(rel)), data)
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range b.k.SecretGenerator {
		for _, f := range g.Files {
			key, file, ok := strings.Cut(f, "=")
			if !ok {
				key, file = path.Base(f), f
			}
			if err := fs.WriteFile(path.Join(top, file), []byte(secretValue(g.Name, key))); err != nil {
				t.Fatal(err)
			}
		}
	}
	rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(fs, top)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", b.dir, err)
	}

	want := map[string]bool{}
	for _, o := range b.objects {
		want[o.name()] = true
	}
	for name := range b.secrets {
		want["Secret/"+name] = true
	}
	var extra []string
	for _, r := range rm.Resources() {
		name := r.GetKind() + "/" + r.GetName()
		if !want[name] {
			extra = append(extra, name)
			continue
		}
		delete(want, name)
		if ns := r.GetNamespace(); r.GetKind() != "Namespace" && ns != b.k.Namespace {
			t.Errorf("kustomize build: %s in namespace %q, want %q", name, ns, b.k.Namespace)
		}
		data, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		obj, err := scheme.New(schema.FromAPIVersionAndKind(r.GetApiVersion(), r.GetKind()))
		if err != nil {
			t.Errorf("kustomize build: %s: %v", name, err)
			continue
		}
		if err := strict(data, obj); err != nil {
			t.Errorf("kustomize build: %s: %v", name, err)
		}
	}
	var missing []string
	for name := range want {
		missing = append(missing, name)
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing) > 0 || len(extra) > 0 {
		t.Errorf("kustomize build: missing %v, unexpected %v (a generated name with a hash suffix?)", missing, extra)
	}
}
