package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const pgInstall = "apt-get install postgresql-15 postgresql-client-15"

// pgEnvDrop keeps the caller's PGHOST, PGPORT, PGDATA and the like away
// from the server and its tools.
var pgEnvDrop = []string{"PG"}

// PostgresServer is a running PostgreSQL server. Its superuser postgres
// connects over TCP without a password (trust authentication); there is no
// Unix socket.
type PostgresServer struct {
	Host    string // 127.0.0.1
	Port    int
	User    string // postgres, the superuser
	BinDir  string // the server's installation: use its client tools, see Bin
	DataDir string

	t    testing.TB
	proc *process
	dir  string
	cred *syscall.Credential // the postgres user's under root, else nil
}

// pgTemplate is an initdb result shared by the test process: copying it
// takes a fraction of the second or two initdb needs.
var pgTemplate dirTemplate

// Postgres starts a PostgreSQL server for the test and stops it when the
// test ends. Under root the server runs as the postgres user, because
// PostgreSQL refuses to run as root.
func Postgres(t testing.TB) *PostgresServer {
	t.Helper()
	bin := findBinary(t, "postgres", pgInstall)
	// Some images link /usr/local/bin/postgres to the real installation,
	// whose directory holds the other tools.
	if real, err := filepath.EvalSymlinks(bin); err == nil {
		bin = real
	}
	s := &PostgresServer{Host: "127.0.0.1", User: "postgres", BinDir: filepath.Dir(bin), t: t}
	initdb := s.Bin("initdb")
	s.Bin("pg_isready") // for the readiness check

	var err error
	if s.cred, err = pgCredential(); err != nil {
		t.Fatalf("testenv: PostgreSQL: %v", err)
	}
	tmpl, err := pgTemplate.get("pg", s.cred, func(dir string) error {
		cmd := exec.Command(initdb, "-D", filepath.Join(dir, "data"), "-U", "postgres", "-A", "trust",
			"-E", "UTF8", "--locale=C.UTF-8", "--no-sync", "--no-instructions")
		cmd.Dir = dir // initdb needs a working directory it can read
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
		cmd.Env = filterEnv(os.Environ(), pgEnvDrop)
		return run(cmd)
	})
	if err != nil {
		t.Fatalf("testenv: PostgreSQL template: %v", err)
	}

	s.dir = serverDir(t, "pg")
	if s.cred != nil {
		if err := os.Chown(s.dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			t.Fatalf("testenv: %v", err)
		}
	}
	s.DataDir = filepath.Join(s.dir, "data")
	if err := copyDir(filepath.Join(tmpl, "data"), s.DataDir); err != nil {
		t.Fatalf("testenv: PostgreSQL data directory: %v", err)
	}
	for range 3 {
		s.Port = freePort(t)
		s.proc = &process{
			t:    t,
			name: "PostgreSQL",
			bin:  bin,
			// Durability is off: these servers hold throwaway data.
			args: []string{"-D", s.DataDir, "-p", strconv.Itoa(s.Port),
				"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
				"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
				"-c", "shared_buffers=16MB", "-c", "max_connections=20"},
			envDrop: pgEnvDrop,
			ready:   s.ready,
			// SIGINT is a fast shutdown; SIGTERM would wait for clients.
			stopSig: syscall.SIGINT,
			logPath: filepath.Join(s.dir, "postgres.log"),
			dir:     s.dir,
			cred:    s.cred,
		}
		if err = s.proc.start(); err == nil {
			s.proc.register()
			return s
		}
	}
	t.Fatalf("testenv: %v\nlast lines of the PostgreSQL log:\n%s", err, s.proc.logTail(50))
	return nil
}

func (s *PostgresServer) ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(s.BinDir, "pg_isready"), "-q",
		"-h", s.Host, "-p", strconv.Itoa(s.Port), "-U", s.User, "-d", "postgres")
	cmd.Env = filterEnv(os.Environ(), pgEnvDrop)
	return run(cmd)
}

// DSN returns a connection URL for database db as the superuser.
func (s *PostgresServer) DSN(db string) string {
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", s.User, hostPort(s.Port), db)
}

// Env returns PGHOST, PGPORT and PGUSER for this server, for client tools
// such as psql and pg_dump.
func (s *PostgresServer) Env() []string {
	return []string{"PGHOST=" + s.Host, "PGPORT=" + strconv.Itoa(s.Port), "PGUSER=" + s.User}
}

// Bin returns the path of a tool of the server's installation (pg_dump,
// pg_restore, psql). /usr/bin/psql and friends on Debian are wrappers that
// may pick another version. A missing tool skips or fails the test like a
// missing server.
func (s *PostgresServer) Bin(name string) string {
	s.t.Helper()
	p := filepath.Join(s.BinDir, name)
	if fi, err := os.Stat(p); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		missing(s.t, fmt.Sprintf("testenv: %s not found in %s, next to postgres; install with: %s", name, s.BinDir, pgInstall))
	}
	return p
}

// Dump returns a plain pg_dump of database db without the \restrict and
// \unrestrict lines, whose key is new in each dump, so that two dumps of
// the same content compare equal.
func (s *PostgresServer) Dump(t testing.TB, db string) string {
	t.Helper()
	cmd := exec.Command(s.Bin("pg_dump"), "-d", db)
	cmd.Env = append(filterEnv(os.Environ(), pgEnvDrop), s.Env()...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("pg_dump %s: %v", db, err)
	}
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(l, `\restrict `) && !strings.HasPrefix(l, `\unrestrict `) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// Stop stops the server (SIGINT, a fast shutdown) and waits for it to exit.
// Its port and data stay reserved for Start. Stopping a stopped server
// does nothing.
func (s *PostgresServer) Stop() { s.proc.stop() }

// Start starts a stopped server again on the same port and data directory
// and waits until it is ready.
func (s *PostgresServer) Start() {
	s.t.Helper()
	restart(s.t, s.proc, hostPort(s.Port), func() error { return s.proc.start() })
}

// pgCredential returns the postgres user's ids when the test runs as root,
// and nil otherwise: the server then runs as the current user.
func pgCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs a postgres user to run the server as: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres gid %q: %w", u.Gid, err)
	}
	// An empty Groups list drops root's supplementary groups.
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

// The helpers below are shared by the etcd, PostgreSQL, MariaDB and Redis
// starters.

// serverDir returns a new directory for one server, removed when the test
// ends. Unlike t.TempDir() its parent is not 0700, so a server running as
// another user can reach it, and its path is short enough for Unix sockets.
func serverDir(t testing.TB, name string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "te-"+name+"-")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	// Registered before the server's own cleanup, so it runs after the
	// server has stopped and its log has been shown.
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// restart starts a stopped server again with start, retrying briefly in
// case its old port is still being released, and fails the test if it does
// not come back. Call it from the test's goroutine.
func restart(t testing.TB, p *process, addr string, start func() error) {
	t.Helper()
	if p.running() {
		return
	}
	var err error
	for range 3 {
		if err = start(); err == nil {
			return
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("testenv: restart %s on %s: %v\nlast lines of the log:\n%s", p.name, addr, err, p.logTail(50))
}

// missing skips the test because of a missing tool, or fails it where
// servers are required (see findBinary).
func missing(t testing.TB, msg string) {
	t.Helper()
	if required() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// run runs a short command and puts its output into the error when it fails.
func run(cmd *exec.Cmd) error {
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", strings.Join(cmd.Args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// copyDir copies the directory tree src to dst, which must not exist,
// keeping modes and (as root) owners.
func copyDir(src, dst string) error {
	return run(exec.Command("cp", "-a", src, dst))
}

// dirTemplate is a directory made once per test process and copied for
// each server that needs it.
type dirTemplate struct {
	once sync.Once
	dir  string
	err  error
}

// get returns the template directory, creating it with create on the first
// call. owner, if not nil, gets the directory before create runs. A failed
// create is tried once more in a new directory: mariadb-install-db has
// failed once while every package's tests ran at the same time.
func (tp *dirTemplate) get(name string, owner *syscall.Credential, create func(dir string) error) (string, error) {
	tp.once.Do(func() {
		// Nothing removes a template when the test process ends, so each
		// new one removes those of processes that have exited. The
		// process id in the name tells whose it is.
		prefix := "te-" + name + "-tmpl-"
		removeStaleTemplates(prefix)
		tp.dir, tp.err = makeTemplate(prefix, owner, create)
		if tp.err != nil {
			var err error
			if tp.dir, err = makeTemplate(prefix, owner, create); err == nil {
				tp.err = nil
			} else {
				tp.err = fmt.Errorf("%w; again: %v", tp.err, err)
			}
		}
	})
	return tp.dir, tp.err
}

func makeTemplate(prefix string, owner *syscall.Credential, create func(dir string) error) (string, error) {
	dir, err := os.MkdirTemp("", prefix+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return "", err
	}
	if owner != nil {
		if err := os.Chown(dir, int(owner.Uid), int(owner.Gid)); err != nil {
			os.RemoveAll(dir)
			return "", err
		}
	}
	if err := create(dir); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

// removeStaleTemplates removes the template directories named prefix<pid>-…
// whose process no longer exists.
func removeStaleTemplates(prefix string) {
	matches, _ := filepath.Glob(filepath.Join(os.TempDir(), prefix+"*"))
	for _, m := range matches {
		pidText, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(m), prefix), "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(m)
		}
	}
}
