package docstest

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// TestDocs runs every page's ```sh blocks in order, against a fresh server
// per page, once with the Go server and CLI and once with the Python ones,
// with ADDR (host:port), POLYSTREAM_ADDR (the same, so the CLI finds it),
// PROTOSET (the descriptors for grpcurl), REPO and PYTHONPATH (REPO/python,
// so `/usr/bin/python3 -` snippets import polystream) set, and `polystream`
// and `grpcurl` on PATH. Each page runs in its own temporary directory,
// shared by its blocks. A missing grpcurl or Python fails the test: the
// docs would not be checked.
func TestDocs(t *testing.T) {
	repo := repoRoot(t)
	pages, err := findPages(repo)
	if err != nil {
		t.Fatal(err)
	}
	if len(pages) == 0 {
		t.Fatal("no docs page has a ```sh block: nothing would be checked")
	}
	grpcurlDir := filepath.Dir(findGrpcurl(t))
	checkPython(t, repo) // both passes run Python snippets

	t.Run("go", func(t *testing.T) {
		impl := goImplementation(t, repo)
		runPages(t, repo, pages, impl, grpcurlDir)
	})
	t.Run("python", func(t *testing.T) {
		impl := pythonImplementation(t, repo)
		runPages(t, repo, pages, impl, grpcurlDir)
	})
}

func runPages(t *testing.T, repo string, pages []page, impl implementation, grpcurlDir string) {
	for _, p := range pages {
		t.Run(p.path, func(t *testing.T) {
			addr := startServer(t, impl)
			env := blockEnv(impl, map[string]string{
				"ADDR":            addr,
				"POLYSTREAM_ADDR": addr,
				"PROTOSET":        filepath.Join(repo, "proto", "polystream.protoset"),
				"REPO":            repo,
				"PYTHONPATH":      filepath.Join(repo, "python"),
				"PATH":            impl.binDir + ":" + grpcurlDir + ":" + os.Getenv("PATH"),
			})
			dir := t.TempDir()
			for _, b := range p.blocks {
				runBlock(t, impl, b, dir, env)
				if t.Failed() {
					return // later blocks of a page may build on this one
				}
			}
		})
	}
}

// blockEnv is the test's environment without POLYSTREAM_* settings (they
// would change the servers the blocks start), plus impl's and vars.
func blockEnv(impl implementation, vars map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if _, set := vars[name]; !set && !strings.HasPrefix(name, "POLYSTREAM_") {
			env = append(env, kv)
		}
	}
	env = append(env, impl.env...)
	for name, value := range vars {
		env = append(env, name+"="+value)
	}
	slices.Sort(env)
	return env
}

// goImplementation builds the Go CLI (statically, as `make build` does).
func goImplementation(t *testing.T, repo string) implementation {
	binDir := t.TempDir()
	bin := filepath.Join(binDir, "polystream")
	build := exec.Command(goTool(), "build", "-o", bin, "./go/cmd/polystream")
	build.Dir = repo
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./go/cmd/polystream: %v\n%s", err, out)
	}
	return implementation{name: "go", binDir: binDir, serve: []string{bin, "serve", "--port", "0"}}
}

// python is the only interpreter the project supports.
const python = "/usr/bin/python3"

// checkPython fails the test, with what to install, unless python can
// import grpc, protobuf and polystream from REPO/python.
func checkPython(t *testing.T, repo string) {
	t.Helper()
	if _, err := os.Stat(python); err != nil {
		t.Fatalf("%s is missing; the docs run Python snippets and the Python server: install python3, python3-grpcio and python3-protobuf (%v)", python, err)
	}
	check := exec.Command(python, "-c", "import grpc, google.protobuf, polystream.client")
	check.Env = append(os.Environ(), "PYTHONPATH="+filepath.Join(repo, "python"))
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("%s cannot import grpc, google.protobuf and polystream (PYTHONPATH=python): %v\n%s\ninstall python3-grpcio and python3-protobuf", python, err, out)
	}
}

// pythonImplementation puts a `polystream` wrapper for the Python CLI on
// PATH and checks that it starts.
func pythonImplementation(t *testing.T, repo string) implementation {
	binDir := t.TempDir()
	wrapper := filepath.Join(binDir, "polystream")
	script := "#!/bin/sh\nexec " + python + " -m polystream \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	impl := implementation{
		name:   "python",
		binDir: binDir,
		serve:  []string{wrapper, "serve", "--port", "0"},
		env:    []string{"PYTHONPATH=" + filepath.Join(repo, "python")},
	}
	check := exec.Command(wrapper, "--help")
	check.Env = append(os.Environ(), impl.env...)
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("the Python CLI does not start (`%s -m polystream --help` with PYTHONPATH=python): %v\n%s", python, err, out)
	}
	return impl
}

func repoRoot(t *testing.T) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// findGrpcurl looks on PATH, then in GOPATH/bin; the docs use it, so its
// absence fails the test rather than skipping it.
func findGrpcurl(t *testing.T) string {
	if path, err := exec.LookPath("grpcurl"); err == nil {
		return path
	}
	out, err := exec.Command(goTool(), "env", "GOPATH").Output()
	if err == nil {
		path := filepath.Join(strings.TrimSpace(string(out)), "bin", "grpcurl")
		if _, err := os.Stat(path); err == nil {
			return path
		}
	}
	t.Fatal("grpcurl is not on PATH nor in $(go env GOPATH)/bin; install it with `bash scripts/install-tools.sh grpcurl`")
	return ""
}

func goTool() string {
	if path, err := exec.LookPath("go"); err == nil {
		return path
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// TestGrpcurlListsServices checks what a grpcurl user sees through
// reflection, from either server: the three services, health and
// reflection.
func TestGrpcurlListsServices(t *testing.T) {
	repo := repoRoot(t)
	grpcurl := findGrpcurl(t)
	checkPython(t, repo)
	for _, lang := range []string{"go", "python"} {
		t.Run(lang, func(t *testing.T) {
			impl := pythonImplementation
			if lang == "go" {
				impl = goImplementation
			}
			addr := startServer(t, impl(t, repo))
			out, err := exec.Command(grpcurl, "-plaintext", addr, "list").CombinedOutput()
			if err != nil {
				t.Fatalf("grpcurl list: %v\n%s", err, out)
			}
			listed := strings.Fields(string(out))
			for _, want := range []string{
				"polystream.events.v1.EventService",
				"polystream.updates.v1.StreamService",
				"polystream.chat.v1.ChatService",
				"grpc.health.v1.Health",
				"grpc.reflection.v1.ServerReflection",
			} {
				if !slices.Contains(listed, want) {
					t.Errorf("grpcurl list shows %v, missing %s", listed, want)
				}
			}
			out, err = exec.Command(grpcurl, "-plaintext", "-d", `{"service":"polystream.chat.v1.ChatService"}`, addr, "grpc.health.v1.Health/Check").CombinedOutput()
			if err != nil || !strings.Contains(string(out), "SERVING") {
				t.Errorf("health check through grpcurl: %v\n%s", err, out)
			}
		})
	}
}

// TestPatternPagesShowBothLanguages keeps every pattern page's promise:
// a "Go usage" and a "Python usage" section, the latter with at least one
// executed Python snippet.
func TestPatternPagesShowBothLanguages(t *testing.T) {
	repo := repoRoot(t)
	paths, err := filepath.Glob(filepath.Join(repo, "docs", "patterns", "*.md"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no pattern pages (%v)", err)
	}
	for _, path := range paths {
		text, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, heading := range []string{"\n## Go usage\n", "\n## Python usage\n"} {
			if !strings.Contains(string(text), heading) {
				t.Errorf("%s has no %q section", path, strings.TrimSpace(heading))
			}
		}
		blocks, err := shellBlocks(path)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(blocks, func(b block) bool { return strings.Contains(b.script, python+" - <<") }) {
			t.Errorf("%s runs no Python snippet (a ```sh block with `%s - <<'EOF'`)", path, python)
		}
	}
}
