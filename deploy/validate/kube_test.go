package validate

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"
)

// kubeDir holds one kustomization per folder (relay, agent, proxy-sidecar).
const kubeDir = "../kubernetes"

// Values the test gives what the kubelet and the API server fill in.
const (
	testPodIP = "10.244.1.23"
	// handover is what a relay spends after SIGTERM before it drains: it
	// keeps accepting while a successor could take its ports (HandoverWait,
	// 5 s) and keeps its control channels a second more.
	handover = 6 * time.Second
	// graceMargin is what terminationGracePeriodSeconds and TimeoutStopSec
	// must leave beyond the relay's own stop, for the last closes and exit.
	graceMargin = 30 * time.Second
	// roleGrace is how long an agent or a proxy lets live streams finish
	// after SIGTERM (agent.DefaultGrace, proxy.DefaultGrace); twice that
	// leaves room for the rest of its stop.
	roleGrace = 10 * time.Second
)

// kustomization is the part of kustomize's Kustomization these manifests
// use, decoded strictly: a field this test does not know (configMapGenerator,
// patches, a typo) fails here rather than passing unchecked.
type kustomization struct {
	APIVersion      string      `json:"apiVersion"`
	Kind            string      `json:"kind"`
	Namespace       string      `json:"namespace"`
	Resources       []string    `json:"resources"`
	SecretGenerator []secretGen `json:"secretGenerator"`
}

type secretGen struct {
	Name    string   `json:"name"`
	Type    string   `json:"type"`
	Files   []string `json:"files"`
	Options *struct {
		DisableNameSuffixHash bool `json:"disableNameSuffixHash"`
	} `json:"options"`
}

// object is one decoded manifest document.
type object struct {
	where string // file#n
	gvk   schema.GroupVersionKind
	obj   runtime.Object
}

func (o object) meta() metav1.Object { return o.obj.(metav1.Object) }
func (o object) name() string        { return o.gvk.Kind + "/" + o.meta().GetName() }

// workload is a Deployment or StatefulSet: what pods it makes.
type workload struct {
	object
	replicas int32
	selector *metav1.LabelSelector
	template *corev1.PodTemplateSpec
}

// bundle is one kustomization with everything it makes.
type bundle struct {
	dir        string
	k          kustomization
	objects    []object
	workloads  []workload
	configMaps map[string]*corev1.ConfigMap
	// secrets: name -> key -> the value the test gives it (generated
	// Secrets' files are not in git).
	secrets     map[string]map[string]string
	secretTypes map[string]corev1.SecretType
	services    []*corev1.Service
	used        map[string]bool // "ConfigMap/x", "Secret/y" referenced by a pod
}

var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme,
		networkingv1.AddToScheme, policyv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}()

// allowedKinds are the kinds this test has checks for; another kind fails
// until it gets them.
var allowedKinds = []string{"Namespace", "ConfigMap", "Secret", "Service", "Deployment", "StatefulSet",
	"PodDisruptionBudget", "NetworkPolicy"}

func TestKubernetes(t *testing.T) {
	dirs, err := filepath.Glob(filepath.Join(kubeDir, "*", "kustomization.yaml"))
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no kustomization under %s (%v)", kubeDir, err)
	}
	for _, k := range dirs {
		dir := filepath.Dir(k)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			b := load(t, dir)
			b.kustomizeBuild(t)
			b.checkObjects(t)
			b.checkWorkloads(t)
			b.checkServices(t)
			b.checkPolicies(t)
			b.checkHybrid(t)
			b.checkAllUsed(t)
		})
	}
	checkPendingUsed(t)
}

// strict decodes YAML into v, refusing unknown and duplicate fields.
func strict(data []byte, v any) error { return sigsyaml.UnmarshalStrict(data, v) }

// load decodes the kustomization in dir and every document of its
// resources against the Kubernetes API types.
func load(t *testing.T, dir string) *bundle {
	t.Helper()
	b := &bundle{dir: dir, configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]map[string]string{},
		secretTypes: map[string]corev1.SecretType{}, used: map[string]bool{}}
	data, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := strict(data, &b.k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	if b.k.APIVersion != "kustomize.config.k8s.io/v1beta1" || b.k.Kind != "Kustomization" {
		t.Errorf("kustomization.yaml: apiVersion/kind %s/%s", b.k.APIVersion, b.k.Kind)
	}
	if errs := validation.IsDNS1123Label(b.k.Namespace); len(errs) > 0 {
		t.Errorf("kustomization.yaml: namespace %q: %v", b.k.Namespace, errs)
	}

	// Every manifest in the folder is a resource, and every resource exists.
	yamls, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	for _, y := range yamls {
		if base := filepath.Base(y); base != "kustomization.yaml" && !slices.Contains(b.k.Resources, base) {
			t.Errorf("%s is not in kustomization.yaml's resources", y)
		}
	}
	for _, r := range b.k.Resources {
		b.loadFile(t, filepath.Join(dir, r))
	}

	for _, g := range b.k.SecretGenerator {
		if g.Options == nil || !g.Options.DisableNameSuffixHash {
			t.Errorf("secretGenerator %s: want options.disableNameSuffixHash: true (a hashed name rolls every pod "+
				"on a change, and the old ones keep the old keys while they drain; the mounted files follow a change live)", g.Name)
		}
		if _, dup := b.secrets[g.Name]; dup {
			t.Errorf("Secret %s made twice", g.Name)
		}
		keys := map[string]string{}
		for _, f := range g.Files {
			key, file, ok := strings.Cut(f, "=")
			if !ok {
				key, file = path.Base(f), f
			}
			if !strings.HasPrefix(file, "secrets/") {
				t.Errorf("secretGenerator %s: %s is not under secrets/ (which git ignores)", g.Name, file)
			}
			if errs := validation.IsConfigMapKey(key); len(errs) > 0 {
				t.Errorf("secretGenerator %s: key %q: %v", g.Name, key, errs)
			}
			keys[key] = secretValue(g.Name, key)
		}
		b.secrets[g.Name] = keys
		b.secretTypes[g.Name] = corev1.SecretType(g.Type)
		if g.Type == string(corev1.SecretTypeTLS) && (keys["tls.crt"] == "" || keys["tls.key"] == "") {
			t.Errorf("secretGenerator %s: type %s needs tls.crt and tls.key", g.Name, g.Type)
		}
	}
	ignore, err := os.ReadFile(filepath.Join(dir, "secrets", ".gitignore"))
	if len(b.k.SecretGenerator) > 0 && (err != nil || !bytes.Contains(ignore, []byte("\n*\n"))) {
		t.Errorf("%s/secrets/.gitignore must keep every secret file out of git (%v)", dir, err)
	}
	return b
}

// secretValue is the value the test gives a generated Secret's key: long
// enough for a hybrid key, and URL-safe like the random values the docs
// tell operators to make.
func secretValue(secret, key string) string {
	return "test-" + strings.NewReplacer(".", "-", "_", "-").Replace(secret+"-"+key) + "-0123456789abcdef"
}

func (b *bundle) loadFile(t *testing.T, file string) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Errorf("resource %v", err)
		return
	}
	defer f.Close()
	r := k8syaml.NewYAMLReader(bufio.NewReader(f))
	for n := 1; ; n++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Errorf("%s: %v", file, err)
			return
		}
		where := fmt.Sprintf("%s#%d", file, n)
		var tm metav1.TypeMeta
		if err := sigsyaml.Unmarshal(doc, &tm); err != nil {
			t.Errorf("%s: %v", where, err)
			continue
		}
		if tm.Kind == "" && strings.TrimSpace(stripComments(doc)) == "" {
			continue // comments only
		}
		gvk := schema.FromAPIVersionAndKind(tm.APIVersion, tm.Kind)
		if !slices.Contains(allowedKinds, gvk.Kind) {
			t.Errorf("%s: kind %q has no checks in this test: add them", where, gvk.Kind)
			continue
		}
		obj, err := scheme.New(gvk)
		if err != nil {
			t.Errorf("%s: %v", where, err)
			continue
		}
		if err := strict(doc, obj); err != nil {
			t.Errorf("%s: %s: %v", where, gvk.Kind, err)
			continue
		}
		o := object{where: where, gvk: gvk, obj: obj}
		b.objects = append(b.objects, o)
		switch v := obj.(type) {
		case *appsv1.Deployment:
			b.workloads = append(b.workloads, workload{o, ptrOr(v.Spec.Replicas, 1), v.Spec.Selector, &v.Spec.Template})
		case *appsv1.StatefulSet:
			b.workloads = append(b.workloads, workload{o, ptrOr(v.Spec.Replicas, 1), v.Spec.Selector, &v.Spec.Template})
		case *corev1.ConfigMap:
			b.configMaps[v.Name] = v
		case *corev1.Secret:
			keys := map[string]string{}
			for k, v := range v.StringData {
				keys[k] = v
			}
			for k, v := range v.Data {
				keys[k] = string(v)
			}
			b.secrets[v.Name] = keys
			b.secretTypes[v.Name] = v.Type
		case *corev1.Service:
			b.services = append(b.services, v)
		}
	}
}

func stripComments(doc []byte) string {
	var out []string
	for _, l := range strings.Split(string(doc), "\n") {
		if s := strings.TrimSpace(l); s != "" && !strings.HasPrefix(s, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// checkObjects: names, namespaces, labels of every object.
func (b *bundle) checkObjects(t *testing.T) {
	seen := map[string]string{}
	for _, o := range b.objects {
		m := o.meta()
		if errs := validation.IsDNS1123Subdomain(m.GetName()); len(errs) > 0 {
			t.Errorf("%s: %s: name: %v", o.where, o.name(), errs)
		}
		if prev, dup := seen[o.name()]; dup {
			t.Errorf("%s: %s already defined at %s", o.where, o.name(), prev)
		}
		seen[o.name()] = o.where
		switch {
		case o.gvk.Kind == "Namespace":
			if m.GetName() != b.k.Namespace {
				t.Errorf("%s: Namespace %s, but the kustomization puts everything in %s", o.where, m.GetName(), b.k.Namespace)
			}
		case m.GetNamespace() != "" && m.GetNamespace() != b.k.Namespace:
			t.Errorf("%s: %s: namespace %s, the kustomization's is %s", o.where, o.name(), m.GetNamespace(), b.k.Namespace)
		}
		if errs := metav1validation.ValidateLabels(m.GetLabels(), field.NewPath("metadata", "labels")); len(errs) > 0 {
			t.Errorf("%s: %s: %v", o.where, o.name(), errs.ToAggregate())
		}
		if s, ok := o.obj.(*corev1.Service); ok && len(validation.IsDNS1035Label(s.Name)) > 0 {
			t.Errorf("%s: Service name %q must be a DNS-1035 label", o.where, s.Name)
		}
	}
	if _, ok := seen["Namespace/"+b.k.Namespace]; !ok {
		t.Errorf("no Namespace %s among the resources", b.k.Namespace)
	}
}

// selects reports whether sel selects pods labelled l.
func selects(sel *metav1.LabelSelector, l map[string]string) bool {
	s, err := metav1.LabelSelectorAsSelector(sel)
	return err == nil && sel != nil && !s.Empty() && s.Matches(labels.Set(l))
}

// podsSelectedBy returns the workloads whose pods sel selects.
func (b *bundle) podsSelectedBy(sel *metav1.LabelSelector) []workload {
	var out []workload
	for _, w := range b.workloads {
		if selects(sel, w.template.Labels) {
			out = append(out, w)
		}
	}
	return out
}

// containerPort finds the port p (a name or a number) among c's ports.
func containerPort(c *corev1.Container, p intstr.IntOrString) (corev1.ContainerPort, bool) {
	for _, cp := range c.Ports {
		if p.Type == intstr.String && cp.Name == p.StrVal || p.Type == intstr.Int && cp.ContainerPort == p.IntVal {
			return cp, true
		}
	}
	return corev1.ContainerPort{}, false
}

// podPort finds p among every container of a pod.
func podPort(spec *corev1.PodSpec, p intstr.IntOrString) (corev1.ContainerPort, bool) {
	for _, c := range allContainers(spec) {
		if cp, ok := containerPort(c, p); ok {
			return cp, true
		}
	}
	return corev1.ContainerPort{}, false
}

func allContainers(spec *corev1.PodSpec) []*corev1.Container {
	var out []*corev1.Container
	for i := range spec.InitContainers {
		out = append(out, &spec.InitContainers[i])
	}
	for i := range spec.Containers {
		out = append(out, &spec.Containers[i])
	}
	return out
}

// checkWorkloads: selectors, pod security, ports, probes, volumes, env.
func (b *bundle) checkWorkloads(t *testing.T) {
	for _, w := range b.workloads {
		where := w.where + ": " + w.name()
		errorf := func(format string, args ...any) { t.Errorf(where+": "+format, args...) }
		if errs := metav1validation.ValidateLabelSelector(w.selector, metav1validation.LabelSelectorValidationOptions{},
			field.NewPath("spec", "selector")); len(errs) > 0 || w.selector == nil {
			errorf("selector: %v", errs.ToAggregate())
		}
		if !selects(w.selector, w.template.Labels) {
			errorf("selector %v does not select its own pod template's labels %v", w.selector, w.template.Labels)
		}
		if ss, ok := w.obj.(*appsv1.StatefulSet); ok {
			if svc := b.service(ss.Spec.ServiceName); svc == nil || svc.Spec.ClusterIP != corev1.ClusterIPNone {
				errorf("serviceName %q: want a headless Service of this kustomization", ss.Spec.ServiceName)
			}
		}
		b.checkPod(t, where, &w.template.Spec)
	}
}

func (b *bundle) service(name string) *corev1.Service {
	for _, s := range b.services {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// imageRef is registry/name:tag with a tag that is not "latest".
var imageRef = regexp.MustCompile(`^[a-z0-9]([a-z0-9._/-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9._-]+)*:[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)

func (b *bundle) checkPod(t *testing.T, where string, spec *corev1.PodSpec) {
	errorf := func(format string, args ...any) { t.Errorf(where+": "+format, args...) }
	psc := spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		errorf("automountServiceAccountToken: want false (nothing here talks to the API server)")
	}

	volumes := map[string]*corev1.Volume{}
	for i := range spec.Volumes {
		v := &spec.Volumes[i]
		if volumes[v.Name] != nil {
			errorf("volume %s twice", v.Name)
		}
		volumes[v.Name] = v
		b.checkVolume(t, where, v)
	}
	mounted := map[string]bool{}

	names := map[string]bool{}
	for i, c := range allContainers(spec) {
		cw := fmt.Sprintf("container %s", c.Name)
		if names[c.Name] {
			errorf("%s: name used twice", cw)
		}
		names[c.Name] = true
		if !imageRef.MatchString(c.Image) || strings.HasSuffix(c.Image, ":latest") {
			errorf("%s: image %q: want registry/name:tag, and not :latest", cw, c.Image)
		}

		// The restricted Pod Security Standard, and then some.
		sc := c.SecurityContext
		if sc == nil {
			sc = &corev1.SecurityContext{}
		}
		if !ptrOr(sc.RunAsNonRoot, ptrOr(psc.RunAsNonRoot, false)) {
			errorf("%s: runAsNonRoot: want true", cw)
		}
		if uid := ptrOr(sc.RunAsUser, ptrOr(psc.RunAsUser, -1)); uid == 0 {
			errorf("%s: runAsUser 0", cw)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			errorf("%s: allowPrivilegeEscalation: want false", cw)
		}
		if sc.Privileged != nil && *sc.Privileged {
			errorf("%s: privileged", cw)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			errorf("%s: readOnlyRootFilesystem: want true", cw)
		}
		if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
			errorf("%s: capabilities: want drop [ALL] and nothing added", cw)
		}
		seccomp := sc.SeccompProfile
		if seccomp == nil {
			seccomp = psc.SeccompProfile
		}
		if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
			errorf("%s: seccompProfile: want RuntimeDefault (pod or container)", cw)
		}

		req, lim := c.Resources.Requests, c.Resources.Limits
		if req.Cpu().IsZero() || req.Memory().IsZero() || lim.Memory().IsZero() {
			errorf("%s: resources: want cpu and memory requests and a memory limit", cw)
		} else if lim.Memory().Cmp(*req.Memory()) < 0 {
			errorf("%s: memory limit below its request", cw)
		}

		portNames, portNums := map[string]bool{}, map[int32]bool{}
		for _, p := range c.Ports {
			if errs := validation.IsValidPortName(p.Name); len(errs) > 0 {
				errorf("%s: port name %q: %v", cw, p.Name, errs)
			}
			if portNames[p.Name] || portNums[p.ContainerPort] {
				errorf("%s: port %s/%d declared twice", cw, p.Name, p.ContainerPort)
			}
			portNames[p.Name], portNums[p.ContainerPort] = true, true
			if p.Protocol != corev1.ProtocolTCP {
				errorf("%s: port %s: protocol %q, want TCP spelled out", cw, p.Name, p.Protocol)
			}
		}
		for what, p := range map[string]*corev1.Probe{"readinessProbe": c.ReadinessProbe,
			"livenessProbe": c.LivenessProbe, "startupProbe": c.StartupProbe} {
			if p == nil {
				continue
			}
			var target intstr.IntOrString
			switch {
			case p.HTTPGet != nil:
				target = p.HTTPGet.Port
				if !strings.HasPrefix(p.HTTPGet.Path, "/") {
					errorf("%s: %s: path %q", cw, what, p.HTTPGet.Path)
				}
			case p.TCPSocket != nil:
				target = p.TCPSocket.Port
			default:
				errorf("%s: %s: want httpGet or tcpSocket (the images have no shell for exec)", cw, what)
				continue
			}
			if _, ok := containerPort(c, target); !ok {
				errorf("%s: %s: port %s is not one of the container's ports", cw, what, target.String())
			}
		}
		if c.LivenessProbe == nil {
			errorf("%s: no livenessProbe", cw)
		}
		if c.RestartPolicy != nil && *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			errorf("%s: restartPolicy %q", cw, *c.RestartPolicy)
		}
		if i < len(spec.InitContainers) && c.RestartPolicy == nil {
			errorf("%s: a plain init container: the hybrid sidecar wants restartPolicy: Always", cw)
		}

		mounts := map[string]bool{}
		for _, m := range c.VolumeMounts {
			if volumes[m.Name] == nil {
				errorf("%s: volumeMount %s: no such volume", cw, m.Name)
			}
			if m.SubPath != "" || m.SubPathExpr != "" {
				errorf("%s: volumeMount %s: subPath never sees an update (live reload needs the ..data swap)", cw, m.Name)
			}
			if mounts[m.MountPath] {
				errorf("%s: %s mounted twice", cw, m.MountPath)
			}
			mounts[m.MountPath] = true
			mounted[m.Name] = true
		}
		b.checkEnv(t, where+": "+cw, c)
	}
	for name := range volumes {
		if !mounted[name] {
			errorf("volume %s is mounted by no container", name)
		}
	}
}

// checkVolume: what a volume refers to exists, with the keys it names.
func (b *bundle) checkVolume(t *testing.T, where string, v *corev1.Volume) {
	errorf := func(format string, args ...any) { t.Errorf(where+": volume "+v.Name+": "+format, args...) }
	paths := map[string]bool{}
	source := func(kind, name string, items []corev1.KeyToPath) {
		keys, ok := b.keysOf(kind, name)
		if !ok {
			errorf("%s %s: not in this kustomization", kind, name)
			return
		}
		b.used[kind+"/"+name] = true
		if len(items) == 0 {
			for k := range keys {
				items = append(items, corev1.KeyToPath{Key: k, Path: k})
			}
		}
		for _, it := range items {
			if _, ok := keys[it.Key]; !ok {
				errorf("%s %s has no key %q", kind, name, it.Key)
			}
			if p := path.Clean(it.Path); p != it.Path || strings.HasPrefix(p, "..") || path.IsAbs(p) {
				errorf("item path %q", it.Path)
			}
			if paths[it.Path] {
				errorf("two items at %s", it.Path)
			}
			paths[it.Path] = true
		}
	}
	switch {
	case v.ConfigMap != nil:
		source("ConfigMap", v.ConfigMap.Name, v.ConfigMap.Items)
	case v.Secret != nil:
		source("Secret", v.Secret.SecretName, v.Secret.Items)
	case v.Projected != nil:
		for _, s := range v.Projected.Sources {
			switch {
			case s.ConfigMap != nil:
				source("ConfigMap", s.ConfigMap.Name, s.ConfigMap.Items)
			case s.Secret != nil:
				source("Secret", s.Secret.Name, s.Secret.Items)
			default:
				errorf("a projected source this test does not know")
			}
		}
	case v.EmptyDir != nil:
	default:
		errorf("a volume type this test does not know")
	}
}

// keysOf returns the keys (and test values) of a ConfigMap or Secret.
func (b *bundle) keysOf(kind, name string) (map[string]string, bool) {
	if kind == "Secret" {
		k, ok := b.secrets[name]
		return k, ok
	}
	cm, ok := b.configMaps[name]
	if !ok {
		return nil, false
	}
	keys := map[string]string{}
	for k, v := range cm.Data {
		keys[k] = v
	}
	return keys, true
}

// varRef is a $(VAR) reference in an env value, command or args; $$ escapes.
var varRef = regexp.MustCompile(`\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// checkEnv: every env source exists, and every $(VAR) names a variable
// defined before it (Kubernetes leaves other references as they are).
func (b *bundle) checkEnv(t *testing.T, where string, c *corev1.Container) {
	if _, err := b.env(c, "pod"); err != nil {
		t.Errorf("%s: %v", where, err)
	}
	defined := map[string]bool{}
	for _, e := range c.Env {
		defined[e.Name] = true
	}
	for _, a := range append(slices.Clone(c.Command), c.Args...) {
		for _, m := range varRef.FindAllStringSubmatch(a, -1) {
			if m[1] != "" && !defined[m[1]] {
				t.Errorf("%s: argument %q: $(%s) is not in env", where, a, m[1])
			}
		}
	}
	if len(c.EnvFrom) > 0 {
		t.Errorf("%s: envFrom: this test does not know it (name each variable)", where)
	}
}

// env computes the container's environment as the kubelet would, with
// the test's values for the downward API and the Secrets.
func (b *bundle) env(c *corev1.Container, podName string) ([]string, error) {
	vals := map[string]string{}
	var out []string
	var errs []error
	for _, e := range c.Env {
		if len(validation.IsEnvVarName(e.Name)) > 0 {
			errs = append(errs, fmt.Errorf("env %s: bad name", e.Name))
		}
		var v string
		switch {
		case e.ValueFrom == nil:
			v = varRef.ReplaceAllStringFunc(e.Value, func(ref string) string {
				if ref == "$$" {
					return "$"
				}
				name := ref[2 : len(ref)-1]
				if x, ok := vals[name]; ok {
					return x
				}
				errs = append(errs, fmt.Errorf("env %s: $(%s) is not defined before it", e.Name, name))
				return ref
			})
		case e.ValueFrom.FieldRef != nil:
			switch e.ValueFrom.FieldRef.FieldPath {
			case "status.podIP":
				v = testPodIP
			case "metadata.name":
				v = podName
			case "metadata.namespace":
				v = b.k.Namespace
			default:
				errs = append(errs, fmt.Errorf("env %s: fieldRef %s: unknown to this test", e.Name, e.ValueFrom.FieldRef.FieldPath))
			}
		case e.ValueFrom.SecretKeyRef != nil:
			r := e.ValueFrom.SecretKeyRef
			keys, ok := b.keysOf("Secret", r.Name)
			b.used["Secret/"+r.Name] = true
			if v, ok = keys[r.Key]; !ok {
				errs = append(errs, fmt.Errorf("env %s: Secret %s key %s: not in this kustomization", e.Name, r.Name, r.Key))
			}
		case e.ValueFrom.ConfigMapKeyRef != nil:
			r := e.ValueFrom.ConfigMapKeyRef
			keys, ok := b.keysOf("ConfigMap", r.Name)
			b.used["ConfigMap/"+r.Name] = true
			if v, ok = keys[r.Key]; !ok {
				errs = append(errs, fmt.Errorf("env %s: ConfigMap %s key %s: not in this kustomization", e.Name, r.Name, r.Key))
			}
		default:
			errs = append(errs, fmt.Errorf("env %s: a source this test does not know", e.Name))
		}
		vals[e.Name] = v
		out = append(out, e.Name+"="+v)
	}
	return out, errors.Join(errs...)
}

// checkServices: each Service selects pods of this kustomization and
// targets ports they declare.
func (b *bundle) checkServices(t *testing.T) {
	for _, s := range b.services {
		where := fmt.Sprintf("Service %s", s.Name)
		ws := b.podsSelectedBy(&metav1.LabelSelector{MatchLabels: s.Spec.Selector})
		if len(ws) == 0 {
			t.Errorf("%s: selector %v selects no pods of this kustomization", where, s.Spec.Selector)
		}
		names, ports := map[string]bool{}, map[int32]bool{}
		for _, p := range s.Spec.Ports {
			if len(s.Spec.Ports) > 1 && p.Name == "" || names[p.Name] || ports[p.Port] {
				t.Errorf("%s: port %q/%d: unnamed or repeated", where, p.Name, p.Port)
			}
			names[p.Name], ports[p.Port] = true, true
			target := p.TargetPort
			if target.Type == intstr.Int && target.IntVal == 0 {
				target = intstr.FromInt32(p.Port)
			}
			for _, w := range ws {
				if _, ok := podPort(&w.template.Spec, target); !ok {
					t.Errorf("%s: port %s targets %s, which %s's pods do not declare", where, p.Name, target.String(), w.name())
				}
			}
		}
		if s.Spec.Type == corev1.ServiceTypeLoadBalancer && s.Spec.ExternalTrafficPolicy == "" {
			t.Errorf("%s: say which externalTrafficPolicy (Local keeps client addresses)", where)
		}
	}
}

// checkPolicies: NetworkPolicies and PodDisruptionBudgets select pods of
// this kustomization, by ports they declare.
func (b *bundle) checkPolicies(t *testing.T) {
	for _, o := range b.objects {
		switch v := o.obj.(type) {
		case *networkingv1.NetworkPolicy:
			where := o.where + ": " + o.name()
			ws := b.podsSelectedBy(&v.Spec.PodSelector)
			if len(ws) == 0 {
				t.Errorf("%s: podSelector selects no pods of this kustomization", where)
			}
			for _, r := range v.Spec.Ingress {
				for _, p := range r.Ports {
					for _, w := range ws {
						if p.Port == nil {
							t.Errorf("%s: a rule with no port opens every port", where)
						} else if _, ok := podPort(&w.template.Spec, *p.Port); !ok {
							t.Errorf("%s: port %s is not declared by %s", where, p.Port.String(), w.name())
						}
					}
				}
				for _, from := range r.From {
					if from.PodSelector != nil && from.NamespaceSelector == nil && len(b.podsSelectedBy(from.PodSelector)) == 0 {
						t.Errorf("%s: from.podSelector %v selects no pods of this kustomization", where, from.PodSelector)
					}
				}
			}
		case *policyv1.PodDisruptionBudget:
			where := o.where + ": " + o.name()
			ws := b.podsSelectedBy(v.Spec.Selector)
			if len(ws) != 1 {
				t.Errorf("%s: selects %d workloads, want 1", where, len(ws))
			}
			for _, w := range ws {
				if v.Spec.MaxUnavailable == nil || v.Spec.MaxUnavailable.Type != intstr.Int ||
					v.Spec.MaxUnavailable.IntVal < 1 || v.Spec.MaxUnavailable.IntVal >= w.replicas {
					t.Errorf("%s: maxUnavailable %v: want a number from 1 to below %d replicas", where, v.Spec.MaxUnavailable, w.replicas)
				}
			}
		}
	}
}

// checkAllUsed: every ConfigMap and Secret is used by some pod.
func (b *bundle) checkAllUsed(t *testing.T) {
	var unused []string
	for name := range b.configMaps {
		if !b.used["ConfigMap/"+name] {
			unused = append(unused, "ConfigMap/"+name)
		}
	}
	for name := range b.secrets {
		if !b.used["Secret/"+name] {
			unused = append(unused, "Secret/"+name)
		}
	}
	sort.Strings(unused)
	for _, u := range unused {
		t.Errorf("%s is used by no pod", u)
	}
}

// hybridRoles are the subcommands that read a config.
var hybridRoles = []string{"relay", "agent", "proxy", "up"}

// checkHybrid: for every hybrid container, lay out its mounted volumes as
// the kubelet would, give it its environment, run `hybrid check` on its
// config, and check the config against the manifests (ports, probes,
// grace periods, files, the directory's address).
func (b *bundle) checkHybrid(t *testing.T) {
	n := 0
	for _, w := range b.workloads {
		for _, c := range allContainers(&w.template.Spec) {
			if len(c.Args) == 0 || !slices.Contains(hybridRoles, c.Args[0]) {
				continue
			}
			n++
			t.Run(w.meta().GetName()+"/"+c.Name, func(t *testing.T) { b.checkHybridContainer(t, w, c) })
		}
	}
	if n == 0 {
		t.Errorf("no hybrid container in %s", b.dir)
	}
}

func (b *bundle) checkHybridContainer(t *testing.T, w workload, c *corev1.Container) {
	role := c.Args[0]
	i := slices.Index(c.Args, "--config")
	if i < 0 || i+1 >= len(c.Args) || len(c.Args) != 3 || c.Command != nil {
		t.Fatalf("args %q: want [%s --config FILE] and the image's entrypoint", c.Args, role)
	}
	configPath := c.Args[i+1]
	if !path.IsAbs(configPath) {
		t.Fatalf("--config %s: want an absolute path", configPath)
	}

	// The container's file system: its mounts, laid out as the kubelet does.
	root := t.TempDir()
	volumes := map[string]*corev1.Volume{}
	for i := range w.template.Spec.Volumes {
		volumes[w.template.Spec.Volumes[i].Name] = &w.template.Spec.Volumes[i]
	}
	var writable []string
	for _, m := range c.VolumeMounts {
		v := volumes[m.Name]
		if v == nil {
			continue // reported by checkPod
		}
		if v.EmptyDir != nil && !m.ReadOnly {
			writable = append(writable, m.MountPath)
		}
		if err := b.materialize(filepath.Join(root, m.MountPath), v); err != nil {
			t.Fatalf("volume %s: %v", v.Name, err)
		}
	}
	configFile := filepath.Join(root, configPath)
	data, err := os.ReadFile(configFile)
	if err != nil {
		t.Fatalf("--config %s is not in any mounted volume: %v", configPath, err)
	}

	env, err := b.env(c, w.meta().GetName()+"-5d8f7c9b4-x2x7q")
	if err != nil {
		t.Fatal(err) // reported in detail by checkEnv
	}
	r := hybridCheck(t, configFile, env)
	if r.summary != "" && !strings.Contains(r.summary, role) {
		t.Errorf("hybrid check: %q: the config has no %s section", r.summary, role)
	}

	cfg, err := parseHybridConfig(data)
	if err != nil {
		t.Fatalf("%s: %v", configPath, err)
	}
	if _, ok := cfg.get(role); !ok {
		t.Errorf("%s: no %s section for `hybrid %s`", configPath, role, role)
	}
	for _, other := range hybridRoles[:3] {
		if _, ok := cfg.get(other); ok && other != role {
			t.Errorf("%s: a %s section the %s container does not run", configPath, other, role)
		}
	}

	// Every file the config names is in a mounted volume.
	for fieldPath, p := range cfg.files() {
		if !path.IsAbs(p) {
			p = path.Join(path.Dir(configPath), p)
		}
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Errorf("%s: %s: %s is in no mounted volume", configPath, fieldPath, p)
		}
	}
	underWritable := func(p string) bool {
		for _, d := range writable {
			if strings.HasPrefix(p, d+"/") {
				return true
			}
		}
		return false
	}

	// Ports: every listener of the config is a declared container port,
	// and the admin listener serves the probes.
	declare := func(field string) int {
		addr := cfg.str(field)
		p, err := port(addr)
		if err != nil {
			t.Errorf("%s: %s: %v", configPath, field, err)
			return 0
		}
		if host := addr[:strings.LastIndexByte(addr, ':')]; host != "0.0.0.0" && host != "" && host != "[::]" {
			t.Errorf("%s: %s %q: the kubelet and the Service reach the pod's address, not %s", configPath, field, addr, host)
		}
		if _, ok := containerPort(c, intstr.FromInt(p)); !ok {
			t.Errorf("%s: %s listens on %d, which the container does not declare", configPath, field, p)
		}
		return p
	}
	admin := declare(role + ".admin")
	probe := func(name string, p *corev1.Probe, wantPath string) {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s: want an httpGet %s on %s", c.Name, name, wantPath)
			return
		}
		cp, _ := containerPort(c, p.HTTPGet.Port)
		if p.HTTPGet.Path != wantPath || int(cp.ContainerPort) != admin {
			t.Errorf("%s: %s %s on port %d, want %s on %s.admin's port %d", c.Name, name, p.HTTPGet.Path, cp.ContainerPort, wantPath, role, admin)
		}
	}
	probe("livenessProbe", c.LivenessProbe, "/healthz")

	if grace := time.Duration(ptrOr(w.template.Spec.TerminationGracePeriodSeconds, 30)) * time.Second; role != "relay" && grace < 2*roleGrace {
		t.Errorf("terminationGracePeriodSeconds %v: want at least %v (the %s gives live streams %v)", grace, 2*roleGrace, role, roleGrace)
	}
	switch role {
	case "relay":
		b.checkRelay(t, w, c, cfg, env, declare, probe)
	case "agent":
		if a := cfg.str("agent.audit"); a != "" && !underWritable(a) {
			t.Errorf("agent.audit %s is on no writable emptyDir mount (the root file system is read-only)", a)
		}
		if c.ReadinessProbe != nil {
			t.Errorf("%s: a readinessProbe on an agent, which no Service sends traffic to", c.Name)
		}
	case "proxy":
		// A sidecar: each local port forward is on the pod's loopback, and
		// some other container of the pod is pointed at it.
		for i := 0; ; i++ {
			l := cfg.str(fmt.Sprintf("proxy.connections.%d.listen", i))
			if _, ok := cfg.get(fmt.Sprintf("proxy.connections.%d", i)); !ok {
				break
			}
			if l == "" {
				continue
			}
			if !strings.HasPrefix(l, "127.") {
				t.Errorf("proxy.connections[%d].listen %s: a sidecar's forwards belong on the pod's loopback", i, l)
			}
			used := false
			for _, o := range allContainers(&w.template.Spec) {
				for _, e := range o.Env {
					used = used || o != c && strings.Contains(e.Value, l)
				}
			}
			if !used {
				t.Errorf("proxy.connections[%d].listen %s: no other container of the pod has it in its env", i, l)
			}
		}
		if c.StartupProbe == nil && c.RestartPolicy != nil {
			t.Errorf("%s: a sidecar without a startupProbe: the app may start before the proxy listens", c.Name)
		}
	}
}

// checkRelay: the relay's rollout, ports, probes and fleet against its config.
func (b *bundle) checkRelay(t *testing.T, w workload, c *corev1.Container, cfg hybridConfig, env []string,
	declare func(string) int, probe func(string, *corev1.Probe, string)) {
	d, ok := w.obj.(*appsv1.Deployment)
	if !ok {
		t.Fatalf("the relay is a %s, want a Deployment", w.gvk.Kind)
	}
	if w.replicas < 3 {
		t.Errorf("replicas %d: want 3 or more (a fleet that survives one relay lost during a rollout)", w.replicas)
	}
	ru := d.Spec.Strategy.RollingUpdate
	if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType || ru == nil ||
		ru.MaxUnavailable == nil || ru.MaxUnavailable.String() != "0" || ru.MaxSurge == nil || ru.MaxSurge.String() == "0" {
		t.Errorf("strategy: want RollingUpdate with maxUnavailable 0 and maxSurge 1 or more (a new relay ready before an old one stops)")
	}
	// Not gated on agents: they connect through the same Service, so a
	// relay that waited for them would never be ready.
	probe("readinessProbe", c.ReadinessProbe, "/readyz?exclude=listeners")

	// Stop: preStop, then GOAWAY and hand-over, then drain_grace, all
	// inside terminationGracePeriodSeconds.
	drain := 10 * time.Minute // relay.drain_grace's default
	if s := cfg.str("relay.drain_grace"); s != "" {
		var err error
		if drain, err = hybridDuration(s); err != nil {
			t.Fatalf("relay.drain_grace %q: %v", s, err)
		}
	}
	var preStop time.Duration
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil {
		if c.Lifecycle.PreStop.Sleep == nil {
			t.Errorf("preStop: want the sleep action (the image has no shell)")
		} else {
			preStop = time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
		}
	}
	grace := time.Duration(ptrOr(w.template.Spec.TerminationGracePeriodSeconds, 30)) * time.Second
	if need := preStop + handover + drain + graceMargin; grace < need {
		t.Errorf("terminationGracePeriodSeconds %v < preStop %v + hand-over %v + drain_grace %v + margin %v: the kubelet would kill live streams",
			grace, preStop, handover, drain, graceMargin)
	}

	// Listeners: each a declared port; the public ones behind the
	// LoadBalancer Service, the peer port behind the headless one only.
	public := map[string]int{}
	for _, l := range []string{"control", "data", "http"} {
		public[l] = declare("relay.listen." + l)
	}
	peer := 0
	if _, fleet := cfg.get("relay.fleet"); fleet {
		peer = declare("relay.fleet.listen")
	}
	var lb, headless bool
	for _, s := range b.services {
		if !selects(&metav1.LabelSelector{MatchLabels: s.Spec.Selector}, w.template.Labels) {
			continue
		}
		exposed := map[int]bool{}
		for _, p := range s.Spec.Ports {
			if cp, ok := containerPort(c, p.TargetPort); ok {
				exposed[int(cp.ContainerPort)] = true
			}
		}
		switch {
		case s.Spec.Type == corev1.ServiceTypeLoadBalancer:
			lb = true
			for l, p := range public {
				if !exposed[p] {
					t.Errorf("Service %s does not expose relay.listen.%s (%d)", s.Name, l, p)
				}
			}
			if peer != 0 && exposed[peer] {
				t.Errorf("Service %s exposes the peer port %d to the internet", s.Name, peer)
			}
			wantPorts := map[int32]string{5671: "control", 9352: "data", 443: "http"}
			for _, p := range s.Spec.Ports {
				if want, ok := wantPorts[p.Port]; ok {
					if cp, _ := containerPort(c, p.TargetPort); int(cp.ContainerPort) != public[want] {
						t.Errorf("Service %s: port %d must reach relay.listen.%s", s.Name, p.Port, want)
					}
					delete(wantPorts, p.Port)
				}
			}
			if len(wantPorts) > 0 {
				t.Errorf("Service %s: missing ports %v (agents and proxies default to 5671, 9352, 443)", s.Name, wantPorts)
			}
		case s.Spec.ClusterIP == corev1.ClusterIPNone:
			headless = peer != 0 && exposed[peer]
		}
	}
	if !lb {
		t.Errorf("no LoadBalancer Service for the relays")
	}
	if peer != 0 && !headless {
		t.Errorf("no headless Service for the peer port %d", peer)
	}

	// The fleet: advertise is this pod's address on the peer port, and the
	// directory URL names a Service of this kustomization.
	if peer != 0 {
		lookup := func(v string) string {
			if m := wholeEnvRef.FindStringSubmatch(v); m != nil {
				for _, e := range env {
					if name, val, _ := strings.Cut(e, "="); name == m[1] {
						return val
					}
				}
			}
			return v
		}
		if adv := lookup(cfg.str("relay.fleet.advertise")); adv != fmt.Sprintf("%s:%d", testPodIP, peer) {
			t.Errorf("relay.fleet.advertise is %q in the pod, want its own address %s:%d", adv, testPodIP, peer)
		}
		u, err := url.Parse(lookup(cfg.str("relay.fleet.redis")))
		if err != nil {
			t.Fatalf("relay.fleet.redis: %v", err)
		}
		svc := b.service(strings.Split(u.Hostname(), ".")[0])
		if svc == nil {
			t.Errorf("relay.fleet.redis names host %q: no Service of this kustomization", u.Hostname())
		} else {
			p, _ := strconv.Atoi(u.Port())
			if !slices.ContainsFunc(svc.Spec.Ports, func(sp corev1.ServicePort) bool { return int(sp.Port) == p }) {
				t.Errorf("relay.fleet.redis: Service %s has no port %d", svc.Name, p)
			}
		}
	}
}

// wholeEnvRef is hybrid's "${VAR}", the whole of a config value.
var wholeEnvRef = regexp.MustCompile(`^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$`)

// hybridDuration parses a duration as hybrid does: Go's form or whole days.
func hybridDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.Atoi(days); err == nil && n >= 0 {
			return time.Duration(n) * 24 * time.Hour, nil
		}
	}
	return time.ParseDuration(s)
}

// materialize writes what volume v holds under dir, laid out as the
// kubelet's atomic writer does for configMap, secret and projected
// volumes: the files in a timestamped folder, ..data a symlink to it, and
// each top-level name a symlink through ..data, so that hybrid reads them
// the way it will in a pod.
func (b *bundle) materialize(dir string, v *corev1.Volume) error {
	files := map[string]string{}
	add := func(kind, name string, items []corev1.KeyToPath) {
		keys, _ := b.keysOf(kind, name)
		if len(items) == 0 {
			for k := range keys {
				items = append(items, corev1.KeyToPath{Key: k, Path: k})
			}
		}
		for _, it := range items {
			files[it.Path] = keys[it.Key]
		}
	}
	switch {
	case v.ConfigMap != nil:
		add("ConfigMap", v.ConfigMap.Name, v.ConfigMap.Items)
	case v.Secret != nil:
		add("Secret", v.Secret.SecretName, v.Secret.Items)
	case v.Projected != nil:
		for _, s := range v.Projected.Sources {
			if s.ConfigMap != nil {
				add("ConfigMap", s.ConfigMap.Name, s.ConfigMap.Items)
			}
			if s.Secret != nil {
				add("Secret", s.Secret.Name, s.Secret.Items)
			}
		}
	default:
		return os.MkdirAll(dir, 0o755)
	}
	const ts = "..2026_01_02_03_04_05.000000001"
	top := map[string]bool{}
	for p, content := range files {
		f := filepath.Join(dir, ts, p)
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(f, []byte(content), 0o440); err != nil {
			return err
		}
		top[strings.Split(p, "/")[0]] = true
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.Symlink(ts, filepath.Join(dir, "..data")); err != nil {
		return err
	}
	for name := range top {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	return nil
}
