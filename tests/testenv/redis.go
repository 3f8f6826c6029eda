package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const redisInstall = "apt-get install redis-server redis-tools"

// RedisServer is a running Redis server with a password and no persistence
// of its own: it saves nothing and has no append-only file, so whatever
// dump.rdb holds in Dir when it starts is what it serves.
type RedisServer struct {
	Addr     string // host:port
	Port     int
	Password string // for AUTH; REDISCLI_AUTH for redis-cli
	Dir      string // holds dump.rdb

	t    testing.TB
	proc *process
}

// Redis starts an empty Redis server for the test and stops it when the
// test ends.
func Redis(t testing.TB) *RedisServer {
	t.Helper()
	return startRedis(t, "")
}

// RedisFromRDB starts a Redis server for the test that loads the RDB file
// rdbPath (from redis-cli --rdb, or a dump.rdb), the way a restore puts a
// backup in place. It is ready once the data is loaded.
func RedisFromRDB(t testing.TB, rdbPath string) *RedisServer {
	t.Helper()
	return startRedis(t, rdbPath)
}

func startRedis(t testing.TB, rdbPath string) *RedisServer {
	t.Helper()
	bin := findBinary(t, "redis-server", redisInstall)
	dir := serverDir(t, "redis")
	s := &RedisServer{Password: randomSecret(t, 16), Dir: dir, t: t}
	if rdbPath != "" {
		data, err := os.ReadFile(rdbPath)
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, "dump.rdb"), data, 0o600)
		}
		if err != nil {
			t.Fatalf("testenv: Redis RDB: %v", err)
		}
	}
	conf := filepath.Join(dir, "redis.conf")
	var err error
	for range 3 {
		s.Port = freePort(t)
		s.Addr = hostPort(s.Port)
		// The password goes into a config file (0600, in a 0700 directory),
		// never on the command line, which every user can read. A file
		// rather than the config on stdin ("redis-server -") because it
		// is read again on Start.
		if err := os.WriteFile(conf, []byte(s.config()), 0o600); err != nil {
			t.Fatalf("testenv: Redis config: %v", err)
		}
		s.proc = &process{
			t:       t,
			name:    "Redis",
			bin:     bin,
			args:    []string{conf},
			ready:   s.ready,
			stopSig: syscall.SIGTERM,
			logPath: filepath.Join(dir, "redis.log"),
		}
		if err = s.proc.start(); err == nil {
			s.proc.register()
			return s
		}
	}
	t.Fatalf("testenv: %v\nlast lines of the Redis log:\n%s", err, s.proc.logTail(50))
	return nil
}

// config returns the server's configuration. With AOF on, Redis would
// ignore dump.rdb and start empty; the diskless sync delay would make each
// redis-cli --rdb take 5 s more.
func (s *RedisServer) config() string {
	return fmt.Sprintf(`port %d
bind 127.0.0.1
protected-mode yes
requirepass %s
dir %q
dbfilename dump.rdb
save ""
appendonly no
repl-diskless-sync-delay 0
loglevel warning
daemonize no
`, s.Port, s.Password, s.Dir)
}

// ready wants PONG, which Redis only answers once it has loaded its data.
func (s *RedisServer) ready(ctx context.Context) error {
	reply, err := s.do(ctx, "PING")
	if err != nil {
		return err
	}
	if reply != "PONG" {
		return fmt.Errorf("PING: %q", reply)
	}
	return nil
}

// Do runs one command as the default user on a new connection and returns
// the reply: a status, a bulk string, or an integer in decimal. An error
// reply, a nil reply (a missing key) and an array reply are errors.
func (s *RedisServer) Do(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return s.do(ctx, args...)
}

func (s *RedisServer) do(ctx context.Context, args ...string) (string, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", s.Addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	// Both commands go out at once; the replies come back in order.
	var req strings.Builder
	writeCommand(&req, "AUTH", s.Password)
	writeCommand(&req, args...)
	if _, err := io.WriteString(conn, req.String()); err != nil {
		return "", err
	}
	r := bufio.NewReader(conn)
	if _, err := readReply(r); err != nil {
		return "", fmt.Errorf("AUTH: %w", err)
	}
	reply, err := readReply(r)
	if err != nil {
		return "", fmt.Errorf("%s: %w", args[0], err)
	}
	return reply, nil
}

// writeCommand writes a command in RESP, as an array of bulk strings.
func writeCommand(w *strings.Builder, args ...string) {
	fmt.Fprintf(w, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(w, "$%d\r\n%s\r\n", len(a), a)
	}
}

// readReply reads one RESP2 reply that is not an array.
func readReply(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return "", errors.New("empty reply")
	}
	switch kind, rest := line[0], line[1:]; kind {
	case '+', ':':
		return rest, nil
	case '-':
		return "", errors.New(rest)
	case '$':
		n, err := strconv.Atoi(rest)
		if err != nil {
			return "", fmt.Errorf("bad bulk length %q", rest)
		}
		if n < 0 {
			return "", errors.New("nil reply")
		}
		buf := make([]byte, n+2) // with the closing \r\n
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	default:
		return "", fmt.Errorf("unsupported reply %q", line)
	}
}

// Bin returns the path of a client tool (redis-cli), skipping or failing
// the test like a missing server.
func (s *RedisServer) Bin(name string) string {
	s.t.Helper()
	return findBinary(s.t, name, redisInstall)
}

// Env returns REDISCLI_AUTH, the way to give redis-cli the password
// without putting it on the command line.
func (s *RedisServer) Env() []string {
	return []string{"REDISCLI_AUTH=" + s.Password}
}

// Stop stops the server (SIGTERM) and waits for it to exit. It saves
// nothing: Start serves what Dir/dump.rdb holds then. Stopping a stopped
// server does nothing.
func (s *RedisServer) Stop() { s.proc.stop() }

// Start starts a stopped server again on the same port and directory and
// waits until it has loaded Dir/dump.rdb, if there is one.
func (s *RedisServer) Start() {
	s.t.Helper()
	restart(s.t, s.proc, s.Addr, s.proc.start)
}
