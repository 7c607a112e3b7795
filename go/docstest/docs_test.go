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
// per page, with ADDR (host:port), POLYSTREAM_ADDR (the same, so the CLI
// finds it), PROTOSET (the descriptors for grpcurl) and REPO set, and
// `polystream` and `grpcurl` on PATH. Each page runs in its own temporary
// directory, shared by its blocks.
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

	t.Run("go", func(t *testing.T) {
		impl := goImplementation(t, repo)
		runPages(t, repo, pages, impl, grpcurlDir)
	})
	t.Run("python", func(t *testing.T) {
		if os.Getenv("POLYSTREAM_DOCS_PYTHON") != "1" {
			t.Skip("set POLYSTREAM_DOCS_PYTHON=1 to run the docs against the Python server and CLI")
		}
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

// pythonImplementation puts a `polystream` wrapper for the Python CLI on
// PATH and checks that it starts.
func pythonImplementation(t *testing.T, repo string) implementation {
	binDir := t.TempDir()
	wrapper := filepath.Join(binDir, "polystream")
	script := "#!/bin/sh\nexec /usr/bin/python3 -m polystream \"$@\"\n"
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
		t.Fatalf("the Python CLI does not start (`python3 -m polystream --help` with PYTHONPATH=python): %v\n%s", err, out)
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
// reflection: the three services, health and reflection.
func TestGrpcurlListsServices(t *testing.T) {
	repo := repoRoot(t)
	grpcurl := findGrpcurl(t)
	impl := goImplementation(t, repo)
	addr := startServer(t, impl)
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
}
