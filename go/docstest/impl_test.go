package docstest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/polystream/polystream/go/internal/grpctest"
)

// implementation is one language's server and CLI as docs pages see them:
// a `polystream` command in binDir.
type implementation struct {
	name   string
	binDir string   // holds `polystream`
	serve  []string // the command line that starts a server on a free port
	env    []string // extra environment for the server and the blocks
}

// startServer runs impl's server on 127.0.0.1 with a free port and returns
// the address it printed. The server is stopped with SIGTERM at cleanup
// and must exit 0 within its shutdown grace (5 s) plus one second.
func startServer(t *testing.T, impl implementation) string {
	t.Helper()
	cmd := exec.Command(impl.serve[0], impl.serve[1:]...)
	cmd.Env = append(os.Environ(), impl.env...)
	cmd.Dir = t.TempDir()
	stderr := &grpctest.Output{}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s server: %v", impl.name, err)
	}
	exited := make(chan error, 1)
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		lines <- line
		io.Copy(io.Discard, stdout)
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() { stopServer(t, impl, cmd, exited, stderr) })

	select {
	case line := <-lines:
		addr, ok := strings.CutPrefix(strings.TrimSpace(line), "polystream listening on ")
		if !ok {
			t.Fatalf("%s server's first line is %q, want `polystream listening on HOST:PORT`; stderr:\n%s", impl.name, line, stderr)
		}
		return addr
	case <-time.After(30 * time.Second):
		t.Fatalf("%s server printed no listening line in 30s; stderr:\n%s", impl.name, stderr)
	}
	return ""
}

func stopServer(t *testing.T, impl implementation, cmd *exec.Cmd, exited <-chan error, stderr *grpctest.Output) {
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("%s server exited with %v after SIGTERM; stderr:\n%s", impl.name, err, lastLines(stderr.String(), 30))
		}
	case <-time.After(6 * time.Second):
		cmd.Process.Kill()
		<-exited
		t.Errorf("%s server did not exit within 6s of SIGTERM; stderr:\n%s", impl.name, lastLines(stderr.String(), 30))
	}
}

// runBlock executes one block with bash -euo pipefail in dir, within 20 s.
// Background jobs a block leaves behind are killed with it (own process
// group).
func runBlock(t *testing.T, impl implementation, b block, dir string, env []string) {
	t.Helper()
	script := filepath.Join(dir, fmt.Sprintf(".block-%d.sh", b.line))
	if err := os.WriteFile(script, []byte(b.script), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", script)
	cmd.Dir = dir
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	output := &grpctest.Output{}
	cmd.Stdout, cmd.Stderr = output, output
	err := cmd.Run()
	if cmd.Process != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // leftovers of `cmd &`
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("still running after 20s (%v)", err)
	}
	if err != nil {
		t.Errorf("%s block at line %d failed: %v\n--- block\n%s--- output\n%s", impl.name, b.line, err, b.script, lastLines(output.String(), 40))
	}
}

func lastLines(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{"..."}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n") + "\n"
}
