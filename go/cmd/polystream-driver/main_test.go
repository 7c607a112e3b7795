package main

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The test binary runs main() itself when asked to, with the arguments
// after "--": the flags are checked as a real start would.
func TestMain(m *testing.M) {
	if os.Getenv("POLYSTREAM_DRIVER_TEST_MAIN") == "1" {
		for i, a := range os.Args {
			if a == "--" {
				os.Args = append([]string{"polystream-driver"}, os.Args[i+1:]...)
				break
			}
		}
		main()
		return
	}
	os.Exit(m.Run())
}

func driverCmd(env string, args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], append([]string{"--"}, args...)...)
	cmd.Env = append(os.Environ(), "POLYSTREAM_DRIVER_TEST_MAIN=1", "POLYSTREAM_DRIVER_FAULT="+env)
	return cmd
}

func TestUnknownFaultIsRefused(t *testing.T) {
	for _, c := range []struct{ env, flag string }{{"", "x"}, {"x", ""}} {
		args := []string{"--port", "0"}
		if c.flag != "" {
			args = append(args, "--fault", c.flag)
		}
		var stderr strings.Builder
		cmd := driverCmd(c.env, args...)
		cmd.Stderr = &stderr
		err := cmd.Run()
		if _, exited := err.(*exec.ExitError); !exited {
			t.Fatalf("env %q flag %q: %v, want a non-zero exit", c.env, c.flag, err)
		}
		want := `--fault must be one of no-deadline, retry-all, no-backoff, blind; got "x"` + "\n"
		if stderr.String() != want {
			t.Fatalf("stderr %q, want %q", stderr.String(), want)
		}
	}
}

func TestFaultBanner(t *testing.T) {
	for _, c := range []struct{ env, flag string }{{"", "blind"}, {"retry-all", ""}} {
		args := []string{"--host", "127.0.0.1", "--port", "0"}
		want := c.env
		if c.flag != "" {
			args, want = append(args, "--fault", c.flag), c.flag
		}
		cmd := driverCmd(c.env, args...)
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line := make(chan string, 1)
		go func() {
			sc := bufio.NewScanner(stderr)
			sc.Scan()
			line <- sc.Text()
		}()
		select {
		case got := <-line:
			if got != "SELF-TEST FAULT ACTIVE: this driver is deliberately defective (fault="+want+")" {
				t.Errorf("stderr %q", got)
			}
		case <-time.After(20 * time.Second):
			t.Error("no banner on stderr")
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
}
