// Package testenv starts throwaway servers for tests: MinIO, etcd,
// PostgreSQL, MariaDB and Redis. Each runs as a child process on free
// loopback ports with its data in a temporary directory, and is stopped
// when the test ends.
//
// Binaries are looked up in $TESTENV_BIN_DIR first (scripts/install-test-deps.sh
// builds the Go-built servers into .cache/testbin, and make test points the
// variable there), then in the system directories Debian keeps off PATH
// (/usr/lib/postgresql/15/bin, /usr/sbin), then in PATH. A missing binary
// skips the test, unless CI=true or CAIRN_REQUIRE_SERVERS=1, which make it a
// failure. go test -short skips every test that needs a server.
//
// A new server type needs a binary name, its arguments and environment, and
// a readiness check; the process handling, ports and logs are shared.
package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startTimeout bounds the wait for a server to become ready; generous
// because the machine may be busy building.
const startTimeout = 60 * time.Second

// required reports whether a missing server must fail the test.
func required() bool {
	return os.Getenv("CI") == "true" || os.Getenv("CAIRN_REQUIRE_SERVERS") == "1"
}

// findBinary returns the path of the named server binary, or ends the test:
// skipped normally, failed in CI. install says how to get the binary.
func findBinary(t testing.TB, name, install string) string {
	t.Helper()
	if testing.Short() {
		t.Skipf("testenv: -short: not starting %s", name)
	}
	if dir := os.Getenv("TESTENV_BIN_DIR"); dir != "" {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	// Debian keeps the PostgreSQL server binaries off PATH, and /usr/sbin
	// (mariadbd) is not on a normal user's PATH. These come before PATH,
	// which may hold wrappers (pg_wrapper's psql) or partial symlink sets.
	for _, dir := range []string{"/usr/lib/postgresql/15/bin", "/usr/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	msg := fmt.Sprintf("testenv: %s not found in $TESTENV_BIN_DIR (%q), /usr/lib/postgresql/15/bin, /usr/sbin or PATH; run scripts/install-test-deps.sh "+
		"and set TESTENV_BIN_DIR=$PWD/.cache/testbin (or %s); CI=true or CAIRN_REQUIRE_SERVERS=1 make this a failure",
		name, os.Getenv("TESTENV_BIN_DIR"), install)
	if required() {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// FreePort returns a loopback port that was free a moment ago, for a
// server or address a test chooses itself. Another process may take it
// before it is bound, so starters retry a start that fails.
func FreePort(t testing.TB) int { t.Helper(); return freePort(t) }

func freePort(t testing.TB) int {
	t.Helper()
	port, err := pickPort()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return port
}

// pickPort is freePort for servers that outlive a test.
func pickPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// randomSecret returns n random bytes in hex, for throwaway credentials.
func randomSecret(t testing.TB, n int) string {
	t.Helper()
	return randomHex(n)
}

// randomHex is randomSecret without a test; crypto/rand.Read never fails.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// process is one server child process. Its output goes to a log file in the
// test's temporary directory; the end of that log is shown when the test
// fails or the server does not start.
type process struct {
	t    testing.TB // for register; nil for a server that outlives any test
	name string
	bin  string
	args []string
	env  []string // added to the parent's environment, minus envDrop
	// envDrop lists prefixes of inherited variables the child must not see,
	// so the caller's settings cannot change the server under test.
	envDrop []string
	// ready returns nil once the server answers.
	ready   func(ctx context.Context) error
	stopSig syscall.Signal
	logPath string
	dir     string              // working directory; empty: the test's
	cred    *syscall.Credential // user to run as; nil: the current one

	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	err  error         // cmd.Wait's result, valid once done is closed
}

// start runs the process and waits until it is ready. It reports why it
// did not start instead of failing, so that callers can retry with new ports.
func (p *process) start() error {
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own copy
	fmt.Fprintf(logf, "=== %s: %s %s\n", time.Now().Format(time.RFC3339Nano), p.bin, strings.Join(p.args, " "))

	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append(filterEnv(os.Environ(), p.envDrop), p.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = p.dir
	// A backstop against servers outliving a killed test binary; the
	// cleanup below is what normally stops them.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: p.cred}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.cmd, p.done = cmd, make(chan struct{})
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	var last error
	for {
		if last = p.ready(ctx); last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before it was ready: %v", p.name, p.err)
		case <-ctx.Done():
			p.stop()
			return fmt.Errorf("%s not ready after %s: %v", p.name, startTimeout, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// running reports whether the process was started and has not exited.
func (p *process) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop asks the process to exit, kills it after 10 s, and reaps it.
func (p *process) stop() {
	if !p.running() {
		return
	}
	_ = p.cmd.Process.Signal(p.stopSig)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// logTail returns the last n lines of the log.
func (p *process) logTail(n int) string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// register stops the process when the test ends and shows its log if the
// test failed.
func (p *process) register() {
	p.t.Cleanup(func() {
		p.stop()
		if p.t.Failed() {
			p.t.Logf("testenv: last lines of the %s log (%s):\n%s", p.name, p.logPath, p.logTail(50))
		}
	})
}

func filterEnv(env, dropPrefixes []string) []string {
	var out []string
outer:
	for _, kv := range env {
		for _, pre := range dropPrefixes {
			if strings.HasPrefix(kv, pre) {
				continue outer
			}
		}
		out = append(out, kv)
	}
	return out
}

// httpReady returns a readiness check that wants 200 from url.
func httpReady(url string) func(ctx context.Context) error {
	client := &http.Client{Timeout: 2 * time.Second}
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return errors.New(url + ": " + resp.Status)
		}
		return nil
	}
}

func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
