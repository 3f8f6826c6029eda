package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

const mariadbInstall = "apt-get install mariadb-server mariadb-client"

// mariadbEnvDrop keeps the caller's MYSQL_HOST, MYSQL_PWD, MYSQL_TCP_PORT
// and the like away from the server and its tools.
var mariadbEnvDrop = []string{"MYSQL", "MARIADB"}

// MariaDBServer is a running MariaDB server whose root user connects over
// TCP without a password.
type MariaDBServer struct {
	Addr    string // host:port
	Port    int
	User    string // root
	DataDir string

	t    testing.TB
	proc *process
}

// mariadbTemplate is a mariadb-install-db result shared by the test
// process: installing takes about 3 s, copying a fraction of that.
var mariadbTemplate dirTemplate

// MariaDB starts a MariaDB server for the test and stops it when the test
// ends.
func MariaDB(t testing.TB) *MariaDBServer {
	t.Helper()
	bin := findBinary(t, "mariadbd", mariadbInstall)
	installDB := findBinary(t, "mariadb-install-db", mariadbInstall)
	s := &MariaDBServer{User: "root", t: t}
	admin := s.Bin("mariadb-admin") // for the readiness check

	// --no-defaults must come first, or /etc/mysql's settings (its
	// socket and datadir) apply. As root, mariadbd refuses to start
	// unless told to stay root.
	asRoot := []string{}
	if os.Geteuid() == 0 {
		asRoot = []string{"--user=root"}
	}
	tmpl, err := mariadbTemplate.get("mariadb", nil, func(dir string) error {
		args := append([]string{"--no-defaults", "--datadir=" + filepath.Join(dir, "data")}, asRoot...)
		args = append(args, "--auth-root-authentication-method=normal", "--skip-test-db",
			"--innodb-log-file-size=8M")
		cmd := exec.Command(installDB, args...)
		cmd.Dir = dir
		cmd.Env = filterEnv(os.Environ(), mariadbEnvDrop)
		return run(cmd)
	})
	if err != nil {
		t.Fatalf("testenv: MariaDB template: %v", err)
	}

	dir := serverDir(t, "mariadb")
	s.DataDir = filepath.Join(dir, "data")
	if err := copyDir(filepath.Join(tmpl, "data"), s.DataDir); err != nil {
		t.Fatalf("testenv: MariaDB data directory: %v", err)
	}
	for range 3 {
		s.Port = freePort(t)
		s.Addr = hostPort(s.Port)
		args := append([]string{"--no-defaults", "--datadir=" + s.DataDir}, asRoot...)
		// Errors go to stderr, that is the log, as --log-error is not set.
		// No --skip-name-resolve: it would disable root@<hostname>, which
		// mariadb-dump --system=users needs.
		args = append(args, "--port="+strconv.Itoa(s.Port), "--bind-address=127.0.0.1",
			"--socket="+filepath.Join(dir, "mysqld.sock"), "--pid-file="+filepath.Join(dir, "mysqld.pid"),
			"--tmpdir="+dir, "--skip-log-bin",
			"--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M")
		s.proc = &process{
			t:       t,
			name:    "MariaDB",
			bin:     bin,
			args:    args,
			envDrop: mariadbEnvDrop,
			ready: func(ctx context.Context) error {
				ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				defer cancel()
				cmd := exec.CommandContext(ctx, admin, s.ClientArgs("--connect-timeout=1", "ping")...)
				cmd.Env = filterEnv(os.Environ(), mariadbEnvDrop)
				return run(cmd)
			},
			stopSig: syscall.SIGTERM,
			logPath: filepath.Join(dir, "mariadb.log"),
		}
		if err = s.proc.start(); err == nil {
			s.proc.register()
			return s
		}
	}
	t.Fatalf("testenv: %v\nlast lines of the MariaDB log:\n%s", err, s.proc.logTail(50))
	return nil
}

// DSN returns a connection string for database db as root, in the form of
// github.com/go-sql-driver/mysql.
func (s *MariaDBServer) DSN(db string) string {
	return fmt.Sprintf("%s@tcp(%s)/%s", s.User, s.Addr, db)
}

// ClientArgs returns the arguments that point a client tool (mariadb,
// mariadb-dump, mariadb-admin) at this server as root, followed by args.
// --no-defaults comes first, so no option file changes the target.
func (s *MariaDBServer) ClientArgs(args ...string) []string {
	return append([]string{"--no-defaults", "-h127.0.0.1", "-P" + strconv.Itoa(s.Port), "-u" + s.User}, args...)
}

// Bin returns the path of a client tool (mariadb, mariadb-dump), skipping
// or failing the test like a missing server.
func (s *MariaDBServer) Bin(name string) string {
	s.t.Helper()
	return findBinary(s.t, name, mariadbInstall)
}

// Stop stops the server (SIGTERM) and waits for it to exit. Its port and
// data stay reserved for Start. Stopping a stopped server does nothing.
func (s *MariaDBServer) Stop() { s.proc.stop() }

// Start starts a stopped server again on the same port and data directory
// and waits until it is ready.
func (s *MariaDBServer) Start() {
	s.t.Helper()
	restart(s.t, s.proc, s.Addr, s.proc.start)
}
