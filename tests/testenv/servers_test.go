package testenv_test

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/tests/testenv"
)

// tool runs a client tool with env added to the environment and returns
// its trimmed standard output. stdin, if not empty, is a file to read.
func tool(t *testing.T, env []string, stdin, bin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	if stdin != "" {
		f, err := os.Open(stdin)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.Stdin = f
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(stdout.String())
}

// timed runs start and logs how long it took.
func timed[S any](t *testing.T, what string, start func() S) S {
	t.Helper()
	begin := time.Now()
	s := start()
	t.Logf("%s ready in %s", what, time.Since(begin).Round(time.Millisecond))
	return s
}

func etcdHealthy(s *testenv.EtcdServer) bool {
	resp, err := http.Get(s.URL + "/health")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func TestEtcdSnapshotRestore(t *testing.T) {
	src := timed(t, "etcd", func() *testenv.EtcdServer { return testenv.Etcd(t) })
	etcdctl := src.Bin("etcdctl")
	ctl := func(s *testenv.EtcdServer, args ...string) string {
		t.Helper()
		return tool(t, nil, "", etcdctl, append([]string{"--endpoints", s.URL}, args...)...)
	}
	ctl(src, "put", "/app/a", "alpha")
	ctl(src, "put", "/app/b", "beta")
	want := ctl(src, "get", "--prefix", "/app/")
	if want != "/app/a\nalpha\n/app/b\nbeta" {
		t.Fatalf("before the snapshot: got %q", want)
	}
	snap := filepath.Join(t.TempDir(), "snap.db")
	ctl(src, "snapshot", "save", snap)
	ctl(src, "put", "/app/late", "not in the snapshot")

	dst := timed(t, "restored etcd", func() *testenv.EtcdServer { return testenv.RestoreEtcd(t, snap) })
	if dst.Endpoint == src.Endpoint || dst.DataDir == src.DataDir {
		t.Fatalf("restored member shares %s / %s with the source", dst.Endpoint, dst.DataDir)
	}
	if got := ctl(dst, "get", "--prefix", "/app/"); got != want {
		t.Errorf("restored keys:\n%s\nwant:\n%s", got, want)
	}
	members := ctl(dst, "member", "list")
	if strings.Count(members, "\n") != 0 || !strings.Contains(members, dst.Name) {
		t.Errorf("restored cluster members: %s", members)
	}

	// A restart keeps the data.
	dst.Stop()
	if etcdHealthy(dst) {
		t.Fatal("etcd still answers after Stop")
	}
	dst.Stop()
	timed(t, "restarted etcd", func() any { dst.Start(); return nil })
	if got := ctl(dst, "get", "--prefix", "/app/"); got != want {
		t.Errorf("keys after restart:\n%s\nwant:\n%s", got, want)
	}
}

func TestPostgresDumpRestore(t *testing.T) {
	src := timed(t, "PostgreSQL (initdb template)", func() *testenv.PostgresServer { return testenv.Postgres(t) })
	psql := func(s *testenv.PostgresServer, db, sql string) string {
		t.Helper()
		return tool(t, s.Env(), "", s.Bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql)
	}
	psql(src, "postgres", "CREATE DATABASE app")
	psql(src, "app", `CREATE TABLE items (id int PRIMARY KEY, body text NOT NULL);
		INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 1000) g`)
	const summary = "SELECT count(*), md5(string_agg(body, ',' ORDER BY id)) FROM items"
	want := psql(src, "app", summary)
	if !strings.HasPrefix(want, "1000|") {
		t.Fatalf("source summary: %q", want)
	}

	dump := filepath.Join(t.TempDir(), "app.dump")
	tool(t, src.Env(), "", src.Bin("pg_dump"), "-Fc", "-d", "app", "-f", dump)

	// Restore into a new database on another server, as after losing one.
	dst := timed(t, "PostgreSQL (copied template)", func() *testenv.PostgresServer { return testenv.Postgres(t) })
	if dst.Port == src.Port || dst.DataDir == src.DataDir {
		t.Fatalf("second server shares %d / %s with the first", dst.Port, dst.DataDir)
	}
	psql(dst, "postgres", "CREATE DATABASE app_restored")
	tool(t, dst.Env(), "", dst.Bin("pg_restore"), "--exit-on-error", "-d", "app_restored", dump)
	if got := psql(dst, "app_restored", summary); got != want {
		t.Errorf("restored summary %q, want %q", got, want)
	}
	if got := psql(dst, "postgres", "SELECT count(*) FROM pg_database WHERE datname = 'app'"); got != "0" {
		t.Errorf("the second server has the first one's database app: %s", got)
	}

	// A restart keeps the data.
	isReady := func() bool {
		return exec.Command(src.Bin("pg_isready"), "-q", "-h", src.Host, "-p", fmt.Sprint(src.Port)).Run() == nil
	}
	src.Stop()
	if isReady() {
		t.Fatal("PostgreSQL still answers after Stop")
	}
	src.Stop()
	timed(t, "restarted PostgreSQL", func() any { src.Start(); return nil })
	if got := psql(src, "app", summary); got != want {
		t.Errorf("summary after restart %q, want %q", got, want)
	}
}

func TestMariaDBDumpRestore(t *testing.T) {
	src := timed(t, "MariaDB (install-db template)", func() *testenv.MariaDBServer { return testenv.MariaDB(t) })
	sql := func(s *testenv.MariaDBServer, db, stmt string) string {
		t.Helper()
		return tool(t, nil, "", s.Bin("mariadb"), s.ClientArgs("-N", "-B", "-e", stmt, db)...)
	}
	sql(src, "mysql", "CREATE DATABASE shop")
	sql(src, "shop", `CREATE TABLE items (id INT PRIMARY KEY, body TEXT NOT NULL) ENGINE=InnoDB;
		INSERT INTO items SELECT seq, MD5(seq) FROM seq_1_to_1000`)
	const summary = "SELECT COUNT(*), MD5(GROUP_CONCAT(body ORDER BY id)) FROM items"
	want := sql(src, "shop", summary)
	if !strings.HasPrefix(want, "1000\t") {
		t.Fatalf("source summary: %q", want)
	}

	dump := filepath.Join(t.TempDir(), "shop.sql")
	out := tool(t, nil, "", src.Bin("mariadb-dump"),
		src.ClientArgs("--single-transaction", "--routines", "--events", "--triggers", "--result-file="+dump, "shop")...)
	if out != "" {
		t.Errorf("mariadb-dump wrote to stdout: %q", out)
	}

	dst := timed(t, "MariaDB (copied template)", func() *testenv.MariaDBServer { return testenv.MariaDB(t) })
	if dst.Port == src.Port || dst.DataDir == src.DataDir {
		t.Fatalf("second server shares %d / %s with the first", dst.Port, dst.DataDir)
	}
	sql(dst, "mysql", "CREATE DATABASE shop_restored")
	tool(t, nil, dump, dst.Bin("mariadb"), dst.ClientArgs("shop_restored")...)
	if got := sql(dst, "shop_restored", summary); got != want {
		t.Errorf("restored summary %q, want %q", got, want)
	}
	if got := sql(dst, "mysql", "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = 'shop'"); got != "0" {
		t.Errorf("the second server has the first one's database shop: %s", got)
	}

	// A restart keeps the data.
	ping := func() bool {
		return exec.Command(src.Bin("mariadb-admin"), src.ClientArgs("--connect-timeout=1", "ping")...).Run() == nil
	}
	src.Stop()
	if ping() {
		t.Fatal("MariaDB still answers after Stop")
	}
	src.Stop()
	timed(t, "restarted MariaDB", func() any { src.Start(); return nil })
	if got := sql(src, "shop", summary); got != want {
		t.Errorf("summary after restart %q, want %q", got, want)
	}
}

func TestRedisRDBRestore(t *testing.T) {
	src := timed(t, "Redis", func() *testenv.RedisServer { return testenv.Redis(t) })
	do := func(s *testenv.RedisServer, args ...string) string {
		t.Helper()
		reply, err := s.Do(args...)
		if err != nil {
			t.Fatalf("%s on %s: %v", strings.Join(args, " "), s.Addr, err)
		}
		return reply
	}
	const n = 100
	for i := range n {
		do(src, "SET", fmt.Sprintf("key:%d", i), fmt.Sprintf("value %d\r\nwith a line break", i))
	}
	do(src, "HSET", "hash", "field", "hashed")
	checkKeys := func(s *testenv.RedisServer) {
		t.Helper()
		if got, want := do(s, "DBSIZE"), fmt.Sprint(n+1); got != want {
			t.Errorf("%s holds %s keys, want %s", s.Addr, got, want)
		}
		for i := range n {
			if got, want := do(s, "GET", fmt.Sprintf("key:%d", i)), fmt.Sprintf("value %d\r\nwith a line break", i); got != want {
				t.Fatalf("key:%d = %q, want %q", i, got, want)
			}
		}
		if got := do(s, "HGET", "hash", "field"); got != "hashed" {
			t.Errorf("hash field = %q", got)
		}
	}
	checkKeys(src)

	// The password is required and never on a command line.
	if _, err := (&testenv.RedisServer{Addr: src.Addr, Password: "wrong"}).Do("PING"); err == nil {
		t.Error("a wrong password is accepted")
	}
	lines := cmdlinesWith(t, "redis-server")
	if len(lines) == 0 {
		t.Error("no redis process in the process list")
	}
	for _, l := range lines {
		if strings.Contains(l, src.Password) {
			t.Errorf("password on a command line: %s", l)
		}
	}

	rdb := filepath.Join(t.TempDir(), "backup.rdb")
	tool(t, src.Env(), "", src.Bin("redis-cli"), "-h", "127.0.0.1", "-p", fmt.Sprint(src.Port), "--rdb", rdb)

	dst := timed(t, "Redis from RDB", func() *testenv.RedisServer { return testenv.RedisFromRDB(t, rdb) })
	checkKeys(dst)

	// A restart saves nothing: the server comes back empty, then with the
	// backup once it is put in place as dump.rdb.
	src.Stop()
	if _, err := src.Do("PING"); err == nil {
		t.Fatal("Redis still answers after Stop")
	}
	src.Stop()
	timed(t, "restarted Redis", func() any { src.Start(); return nil })
	if got := do(src, "DBSIZE"); got != "0" {
		t.Errorf("after a restart without dump.rdb: %s keys, want 0", got)
	}
	src.Stop()
	data, err := os.ReadFile(rdb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src.Dir, "dump.rdb"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	src.Start()
	checkKeys(src)
}
