package server

import (
	"strings"
	"testing"
	"time"
)

func env(vars map[string]string) func(string) string {
	return func(name string) string { return vars[name] }
}

func TestParseFlagsDefaults(t *testing.T) {
	cfg, err := ParseFlags(nil, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if cfg != DefaultConfig() {
		t.Fatalf("got %+v, want the defaults %+v", cfg, DefaultConfig())
	}
	if cfg.Fault != "" || cfg.InitialWindowSize != 0 || cfg.UploadReadDelay != 0 {
		t.Fatalf("a fault, fixed windows or an upload read delay by default: %+v", cfg)
	}
	if cfg.Port != 50051 || cfg.Backpressure != "disconnect" || cfg.MaxMessageSize != 4194304 || cfg.KeepaliveMinTime != 5*time.Second {
		t.Fatalf("defaults differ from docs/contract.md: %+v", cfg)
	}
}

func TestParseFlagsFlagBeatsEnv(t *testing.T) {
	vars := map[string]string{
		"POLYSTREAM_PORT":                "7000",
		"POLYSTREAM_QUEUE_SIZE":          "9",
		"POLYSTREAM_SHUTDOWN_GRACE":      "2s",
		"POLYSTREAM_BACKPRESSURE":        "block",
		"POLYSTREAM_FAULT":               "drop",
		"POLYSTREAM_INITIAL_WINDOW_SIZE": "65536",
		"POLYSTREAM_KEEPALIVE_TIME":      "1m",
		"POLYSTREAM_CHAT_KEEPALIVE":      "500ms",
		"POLYSTREAM_DATA_DIR":            "/tmp/x",
		"POLYSTREAM_MAX_MESSAGE_SIZE":    "1024",
		"POLYSTREAM_UPLOAD_READ_DELAY":   "250ms",
	}
	cfg, err := ParseFlags([]string{"--port", "0", "--queue-size=3", "-shutdown-grace", "1s"}, env(vars))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Port != 0 || cfg.QueueSize != 3 || cfg.ShutdownGrace != time.Second {
		t.Errorf("flags did not win: %+v", cfg)
	}
	if cfg.Backpressure != "block" || cfg.Fault != "drop" || cfg.InitialWindowSize != 65536 || cfg.KeepaliveTime != time.Minute ||
		cfg.ChatKeepAlive != 500*time.Millisecond || cfg.DataDir != "/tmp/x" || cfg.MaxMessageSize != 1024 || cfg.UploadReadDelay != 250*time.Millisecond {
		t.Errorf("variables not applied: %+v", cfg)
	}
}

func TestParseFlagsRejectsBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		vars map[string]string
		want string
	}{
		{[]string{"--backpressure", "drop"}, nil, `--backpressure must be one of drop-newest, drop-oldest, block, disconnect; got "drop"`},
		{[]string{"--history-size", "0"}, nil, "--history-size must be >= 1, got 0"},
		{[]string{"--queue-size", "-1"}, nil, "--queue-size must be >= 1, got -1"},
		{[]string{"--log-level", "verbose"}, nil, `--log-level must be one of debug, info, warn, error; got "verbose"`},
		{[]string{"--port", "70000"}, nil, "--port must be between 0 and 65535, got 70000"},
		{[]string{"--shutdown-grace", "0s"}, nil, "--shutdown-grace must be > 0, got 0s"},
		{[]string{"--fault", "x"}, nil, `--fault must be one of reorder, drop, ignore-cancel, forget-history, no-heartbeat, unknown-client-not-found, duplicate-broadcast, no-replay-gap, miscount-drops, unbounded-queue, wrong-status, strict-keepalive, skip-sequence, lose-request, no-metadata, abrupt-shutdown, unbounded-window; got "x"`},
		{nil, map[string]string{"POLYSTREAM_FAULT": "slow"}, `--fault must be one of reorder, drop, ignore-cancel, forget-history, no-heartbeat, unknown-client-not-found, duplicate-broadcast, no-replay-gap, miscount-drops, unbounded-queue, wrong-status, strict-keepalive, skip-sequence, lose-request, no-metadata, abrupt-shutdown, unbounded-window; got "slow"`},
		{[]string{"--fault", "slow-reader=100"}, nil, `--fault must be one of reorder, drop, ignore-cancel, forget-history, no-heartbeat, unknown-client-not-found, duplicate-broadcast, no-replay-gap, miscount-drops, unbounded-queue, wrong-status, strict-keepalive, skip-sequence, lose-request, no-metadata, abrupt-shutdown, unbounded-window; got "slow-reader=100"`},
		{[]string{"--upload-read-delay", "2m"}, nil, "--upload-read-delay must be between 0s and 1m0s, got 2m0s"},
		{[]string{"--upload-read-delay", "-1s"}, nil, "--upload-read-delay must be between 0s and 1m0s, got -1s"},
		{nil, map[string]string{"POLYSTREAM_UPLOAD_READ_DELAY": "61s"}, "--upload-read-delay must be between 0s and 1m0s, got 1m1s"},
		{[]string{"--upload-read-delay", "100"}, nil, `invalid value "100" for flag -upload-read-delay`},
		{[]string{"--initial-window-size", "-1"}, nil, "--initial-window-size must be 0 or between 65535 and 2147483647, got -1"},
		{[]string{"--initial-window-size", "1000"}, nil, "--initial-window-size must be 0 or between 65535 and 2147483647, got 1000"},
		{[]string{"--initial-window-size", "2147483648"}, nil, "--initial-window-size must be 0 or between 65535 and 2147483647, got 2147483648"},
		{[]string{"--publish-timeout", "5"}, nil, `invalid value "5" for flag -publish-timeout`},
		{[]string{"--nope"}, nil, "flag provided but not defined: -nope"},
		{[]string{"extra"}, nil, `unexpected argument "extra"`},
		{nil, map[string]string{"POLYSTREAM_PORT": "abc"}, `POLYSTREAM_PORT: invalid value "abc": parse error`},
		{nil, map[string]string{"POLYSTREAM_KEEPALIVE_TIME": "ten"}, `POLYSTREAM_KEEPALIVE_TIME: invalid value "ten"`},
	} {
		_, err := ParseFlags(tc.args, env(tc.vars))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseFlags(%q, %v) = %v, want an error containing %q", tc.args, tc.vars, err, tc.want)
		}
	}
}

func TestParseFlagsAcceptsEveryFault(t *testing.T) {
	for _, fault := range []string{"", "reorder", "drop", "ignore-cancel", "forget-history", "no-heartbeat", "unknown-client-not-found", "duplicate-broadcast", "no-replay-gap", "miscount-drops", "unbounded-queue", "wrong-status", "strict-keepalive", "skip-sequence", "lose-request", "no-metadata", "abrupt-shutdown", "unbounded-window"} {
		if cfg, err := ParseFlags([]string{"--fault", fault}, env(nil)); err != nil || cfg.Fault != fault {
			t.Errorf("--fault %q: %v %v", fault, cfg.Fault, err)
		}
	}
}

func TestParseFlagsUploadReadDelay(t *testing.T) {
	for _, tc := range []struct {
		args []string
		vars map[string]string
		want time.Duration
	}{
		{nil, nil, 0},
		{[]string{"--upload-read-delay", "0s"}, nil, 0},
		{[]string{"--upload-read-delay", "100ms"}, nil, 100 * time.Millisecond},
		{[]string{"--upload-read-delay=1m"}, nil, time.Minute},
		{nil, map[string]string{"POLYSTREAM_UPLOAD_READ_DELAY": "5ms"}, 5 * time.Millisecond},
		{[]string{"--upload-read-delay", "1s"}, map[string]string{"POLYSTREAM_UPLOAD_READ_DELAY": "2m"}, time.Second}, // the flag wins
	} {
		cfg, err := ParseFlags(tc.args, env(tc.vars))
		if err != nil || cfg.UploadReadDelay != tc.want {
			t.Errorf("ParseFlags(%q, %v): %v %v, want %v", tc.args, tc.vars, cfg.UploadReadDelay, err, tc.want)
		}
	}
}

func TestHelpAndUsage(t *testing.T) {
	if _, err := ParseFlags([]string{"-h"}, env(nil)); err != ErrHelp {
		t.Fatalf("-h: %v, want ErrHelp", err)
	}
	var usage strings.Builder
	Usage(&usage)
	for _, flag := range []string{"-keepalive-min-time", "-upload-read-delay"} {
		if !strings.Contains(usage.String(), flag) {
			t.Fatalf("usage lacks %s:\n%s", flag, usage.String())
		}
	}
	if strings.Contains(usage.String(), "slow-reader") {
		t.Fatalf("usage still offers slow-reader:\n%s", usage.String())
	}
}

func TestEnvName(t *testing.T) {
	if got := EnvName("max-concurrent-streams"); got != "POLYSTREAM_MAX_CONCURRENT_STREAMS" {
		t.Fatal(got)
	}
}
