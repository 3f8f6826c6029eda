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
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/local"
	"github.com/cairn-backup/cairn/repo/retry"
	"github.com/cairn-backup/cairn/repo/s3"
	"github.com/cairn-backup/cairn/tests/testenv"
)

// cairnBin is the binary under test, built once by TestMain.
var cairnBin string

// testBackend is where NewEnv puts repositories: "local" (a directory) or
// "s3" (a bucket on a MinIO server shared by the whole run), from
// CAIRN_TEST_BACKEND. Every test runs the same way on both.
var testBackend = os.Getenv("CAIRN_TEST_BACKEND")

func TestMain(m *testing.M) {
	switch testBackend {
	case "":
		testBackend = "local"
	case "local", "s3":
	default:
		fmt.Fprintf(os.Stderr, "CAIRN_TEST_BACKEND=%q: want local or s3\n", testBackend)
		os.Exit(2)
	}
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
	stopSharedMinIO(code != 0)
	os.RemoveAll(dir)
	os.Exit(code)
}

// sharedS3 is the MinIO server of CAIRN_TEST_BACKEND=s3, started by the
// first test that needs it; each Env gets a bucket of its own on it.
var sharedS3 struct {
	once    sync.Once
	srv     *testenv.S3Server
	dir     string
	err     error
	buckets atomic.Int64
}

// sharedMinIO returns the shared server, starting it on first use. A
// missing minio binary skips the test, or fails it in CI.
func sharedMinIO(t *testing.T) *testenv.S3Server {
	t.Helper()
	bin := testenv.MinIOBinary(t)
	sharedS3.once.Do(func() {
		sharedS3.dir, sharedS3.err = os.MkdirTemp("", "cairn-e2e-minio-")
		if sharedS3.err == nil {
			sharedS3.srv, sharedS3.err = testenv.StartMinIO(bin, sharedS3.dir)
		}
	})
	if sharedS3.err != nil {
		t.Fatalf("shared MinIO server: %v", sharedS3.err)
	}
	return sharedS3.srv
}

// stopSharedMinIO stops the shared server, if it was started, and removes
// its data; after a failed run the end of its log goes to stderr.
func stopSharedMinIO(failed bool) {
	if sharedS3.srv != nil {
		sharedS3.srv.Stop()
		if failed {
			fmt.Fprintf(os.Stderr, "last lines of the shared MinIO log:\n%s\n", sharedS3.srv.LogTail(50))
		}
	}
	if sharedS3.dir != "" {
		os.RemoveAll(sharedS3.dir)
	}
}

// bucketName returns a new bucket name for t: unique in the run, valid for
// S3 (lowercase, 3 to 63 characters) and naming the test, which helps when
// reading the server's log.
func bucketName(t *testing.T) string {
	name := fmt.Sprintf("e2e-%d-", sharedS3.buckets.Add(1))
	for _, r := range strings.ToLower(t.Name()) {
		if len(name) == 63 {
			break
		}
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			name += string(r)
		} else if !strings.HasSuffix(name, "-") {
			name += "-"
		}
	}
	return strings.TrimRight(name, "-")
}

// Env is one repository with its password and cache. Sources, targets and
// the cache are in a test's temp dir; the repository is there too, or in a
// bucket of its own on the shared MinIO server (CAIRN_TEST_BACKEND=s3).
type Env struct {
	t        *testing.T
	Dir      string // scratch space for sources and targets
	Repo     string
	Cache    string
	Password string
	Extra    []string // more environment, KEY=VALUE

	be repo.Backend // see Backend
}

// NewEnv returns an Env whose repository is not yet initialised.
func NewEnv(t *testing.T) *Env {
	t.Helper()
	e := newLocalEnv(t)
	if testBackend == "s3" {
		srv := sharedMinIO(t)
		e.Repo = srv.URL(bucketName(t))
		e.Extra = srv.Env()
		// The server lives as long as the run: give back its disk space.
		t.Cleanup(e.emptyRepo)
	}
	return e
}

// newLocalEnv returns an Env with its repository in a local directory,
// whatever CAIRN_TEST_BACKEND says.
func newLocalEnv(t *testing.T) *Env {
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

// onS3 reports whether e's repository is an S3 bucket.
func (e *Env) onS3() bool { return strings.HasPrefix(e.Repo, "s3:") }

// getenv reads a variable as cairn sees it: e.Extra, else the test's own
// environment.
func (e *Env) getenv(key string) string {
	for i := len(e.Extra) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(e.Extra[i], key+"="); ok {
			return v
		}
	}
	return os.Getenv(key)
}

// Backend returns a backend on e's repository, as cairn opens it (a local
// directory or an S3 bucket, with retries), for tests that look at or
// change the stored files themselves.
func (e *Env) Backend() repo.Backend {
	e.t.Helper()
	if e.be == nil {
		e.be = e.openBackend()
	}
	return e.be
}

func (e *Env) openBackend() repo.Backend {
	e.t.Helper()
	var be repo.Backend
	if e.onS3() {
		cfg, err := s3.ParseURL(e.Repo)
		if err != nil {
			e.t.Fatal(err)
		}
		cfg.FromEnv(e.getenv)
		sb, err := s3.Open(cfg)
		if err != nil {
			e.t.Fatal(err)
		}
		be = sb
	} else {
		lb, err := local.Open(e.Repo)
		if err != nil {
			e.t.Fatal(err)
		}
		be = lb
	}
	return retry.New(be, retry.Options{})
}

// emptyRepo removes every file of e's repository.
func (e *Env) emptyRepo() {
	e.t.Helper()
	be := e.Backend()
	defer be.Close()
	ctx := context.Background()
	for _, h := range repoFiles(e.t, e, "") {
		if err := be.Remove(ctx, h); err != nil {
			e.t.Errorf("empty the repository: %v", err)
			return
		}
	}
}

// OpenRepo opens e's repository through the library, for tests that plant
// what no command writes; it is closed when the test ends.
func (e *Env) OpenRepo() *repo.Repo {
	e.t.Helper()
	r, err := repo.Open(context.Background(), e.openBackend(), []byte(e.Password))
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
