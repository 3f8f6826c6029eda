// Package tests runs the built cairn binary the way an operator does: real
// processes, real files, exit codes and output checked as a user would.
package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/local"
)

// cairnBin is the binary under test, built once by TestMain.
var cairnBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cairn-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	cairnBin = filepath.Join(dir, "cairn")
	build := exec.Command("go", "build", "-o", cairnBin, "../cmd/cairn")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build cairn:", err)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Env is one repository with its password and cache, in a test's temp dir.
type Env struct {
	t        *testing.T
	Dir      string // scratch space for sources and targets
	Repo     string
	Cache    string
	Password string
	Extra    []string // more environment, KEY=VALUE
}

// NewEnv returns an Env whose repository is not yet initialised.
func NewEnv(t *testing.T) *Env {
	t.Helper()
	dir := t.TempDir()
	return &Env{
		t:        t,
		Dir:      dir,
		Repo:     filepath.Join(dir, "repo"),
		Cache:    filepath.Join(dir, "cache"),
		Password: "correct horse battery staple",
	}
}

// NewRepo returns an Env with an initialised repository.
func NewRepo(t *testing.T) *Env {
	t.Helper()
	e := NewEnv(t)
	e.Must("init")
	return e
}

// OpenRepo opens e's local repository through the library, for tests that
// plant what no command writes; it is closed when the test ends.
func (e *Env) OpenRepo() *repo.Repo {
	e.t.Helper()
	be, err := local.Open(e.Repo)
	if err != nil {
		e.t.Fatal(err)
	}
	r, err := repo.Open(context.Background(), be, []byte(e.Password))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { r.Close() })
	return r
}

// Result is what a cairn process left behind.
type Result struct {
	Args   []string
	Stdout string
	Stderr string
	Code   int
}

func (r Result) String() string {
	return fmt.Sprintf("cairn %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.Args, " "), r.Code, r.Stdout, r.Stderr)
}

// Cmd returns a ready-to-start cairn process for this Env.
func (e *Env) Cmd(args ...string) *exec.Cmd {
	cmd := exec.Command(cairnBin, args...)
	cmd.Env = append(os.Environ(),
		"CAIRN_REPOSITORY="+e.Repo,
		"CAIRN_CACHE_DIR="+e.Cache,
		"CAIRN_PASSWORD="+e.Password,
	)
	cmd.Env = append(cmd.Env, e.Extra...)
	return cmd
}

// Run runs cairn with args and returns its output and exit code.
func (e *Env) Run(args ...string) Result {
	return e.RunStdin(nil, args...)
}

// RunStdin runs cairn with stdin connected to in.
func (e *Env) RunStdin(in []byte, args ...string) Result {
	e.t.Helper()
	cmd := e.Cmd(args...)
	if in != nil {
		cmd.Stdin = bytes.NewReader(in)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := Result{Args: args, Stdout: out.String(), Stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.Code = ee.ExitCode()
	default:
		e.t.Fatalf("run cairn %v: %v", args, err)
	}
	if strings.Contains(r.Stderr, "panic:") || strings.Contains(r.Stderr, "goroutine ") {
		e.t.Fatalf("cairn panicked:\n%s", r)
	}
	return r
}

// Must runs cairn and fails the test unless it exits 0.
func (e *Env) Must(args ...string) Result {
	e.t.Helper()
	r := e.Run(args...)
	if r.Code != 0 {
		e.t.Fatalf("%s", r)
	}
	return r
}

// Fails runs cairn and fails the test unless it exits with code, with a
// one-line error on stderr.
func (e *Env) Fails(code int, args ...string) Result {
	e.t.Helper()
	r := e.Run(args...)
	if r.Code != code {
		e.t.Fatalf("want exit %d, got:\n%s", code, r)
	}
	if strings.TrimSpace(r.Stderr) == "" {
		e.t.Fatalf("exit %d without a message:\n%s", code, r)
	}
	return r
}

// JSONLines decodes every line of s that is a JSON object.
func JSONLines(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not a JSON line: %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// Summary returns the backup summary message of `backup --json` output.
func Summary(t *testing.T, stdout string) map[string]any {
	t.Helper()
	for _, m := range JSONLines(t, stdout) {
		if m["message_type"] == "summary" {
			return m
		}
	}
	t.Fatalf("no summary in:\n%s", stdout)
	return nil
}

// Snapshots returns `snapshots --json` decoded.
func (e *Env) Snapshots(args ...string) []map[string]any {
	e.t.Helper()
	r := e.Must(append([]string{"snapshots", "--json"}, args...)...)
	var out []map[string]any
	if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil {
		e.t.Fatalf("snapshots --json: %v\n%s", err, r.Stdout)
	}
	return out
}

// WriteFile writes data to dir/rel, creating parent directories.
func WriteFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
