package source

import (
	"bytes"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cairn-backup/cairn/tests/testenv"
)

// This test is inside the package to see which transfer form the server
// chose.
func TestRedisRoundTrip(t *testing.T) {
	srv := testenv.Redis(t)
	do := func(s *testenv.RedisServer, args ...string) string {
		t.Helper()
		reply, err := s.Do(args...)
		if err != nil {
			t.Fatalf("%s: %v", strings.Join(args, " "), err)
		}
		return reply
	}
	do(srv, "SET", "greeting", "hello")
	do(srv, "HSET", "user:1", "name", "Ann", "role", "admin")
	do(srv, "RPUSH", "queue", "a", "b", "c")
	do(srv, "SET", "session", "tok", "EX", "3600")
	do(srv, "SET", "big", strings.Repeat("0123456789", 100000))
	for i := range 300 {
		do(srv, "SET", fmt.Sprintf("key:%d", i), strings.Repeat("x", i))
	}
	spec := Spec{Kind: "redis", Name: "cache", Address: srv.Addr, Password: srv.Password}

	for _, tc := range []struct {
		diskless string
		marked   bool // the server sends $EOF:<mark> instead of a length
	}{{"yes", true}, {"no", false}} {
		t.Run("diskless "+tc.diskless, func(t *testing.T) {
			do(srv, "CONFIG", "SET", "repl-diskless-sync", tc.diskless)
			name, rc, err := Open(t.Context(), spec)
			if err != nil {
				t.Fatal(err)
			}
			if marked := rc.(*rdbStream).mark != nil; marked != tc.marked {
				t.Errorf("transfer with an end mark: %v, want %v", marked, tc.marked)
			}
			data, err := io.ReadAll(rc)
			if cerr := rc.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Fatal(err)
			}
			if name != "dump.rdb" || !bytes.HasPrefix(data, []byte("REDIS")) {
				t.Fatalf("%s: %d bytes starting %q", name, len(data), data[:min(len(data), 9)])
			}

			dir := t.TempDir()
			if err := RestoreLive(t.Context(), spec, Target{DataDir: dir}, bytes.NewReader(data)); err != nil {
				t.Fatal(err)
			}
			dst := testenv.RedisFromRDB(t, filepath.Join(dir, "dump.rdb"))
			for _, check := range []struct {
				args []string
				want string
			}{
				{[]string{"DBSIZE"}, do(srv, "DBSIZE")},
				{[]string{"GET", "greeting"}, "hello"},
				{[]string{"HGET", "user:1", "role"}, "admin"},
				{[]string{"LINDEX", "queue", "2"}, "c"},
				{[]string{"LLEN", "queue"}, "3"},
				{[]string{"STRLEN", "big"}, "1000000"},
				{[]string{"GET", "key:299"}, strings.Repeat("x", 299)},
			} {
				if got := do(dst, check.args...); got != check.want {
					t.Errorf("%s: %.40q, want %.40q", strings.Join(check.args, " "), got, check.want)
				}
			}
			if ttl, _ := strconv.Atoi(do(dst, "TTL", "session")); ttl < 3000 || ttl > 3600 {
				t.Errorf("TTL of session after the restore: %d", ttl)
			}

			err = RestoreLive(t.Context(), spec, Target{DataDir: dir}, bytes.NewReader(data))
			if err == nil || !strings.Contains(err.Error(), "exists") {
				t.Errorf("restore over an existing dump.rdb: %v", err)
			}
			err = RestoreLive(t.Context(), spec, Target{DataDir: dst.Dir, Address: dst.Addr, Overwrite: true}, bytes.NewReader(data))
			if err == nil || !strings.Contains(err.Error(), "stop it first") {
				t.Errorf("restore for a running server: %v", err)
			}
			if err := RestoreLive(t.Context(), spec, Target{DataDir: dir, Overwrite: true}, bytes.NewReader(data)); err != nil {
				t.Errorf("overwrite: %v", err)
			}
		})
	}
}

func TestRedisErrors(t *testing.T) {
	srv := testenv.Redis(t)
	const wrong = "wrong-Pa55word"
	_, _, err := Open(t.Context(), Spec{Kind: "redis", Name: "cache", Address: srv.Addr, Password: wrong})
	if err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Errorf("wrong password: %v", err)
	} else if strings.Contains(err.Error(), wrong) {
		t.Errorf("the error shows the password: %v", err)
	}
	_, _, err = Open(t.Context(), Spec{Kind: "redis", Name: "cache", Address: srv.Addr})
	if err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Errorf("no password: %v", err)
	}

	err = RestoreLive(t.Context(), Spec{Kind: "redis"}, Target{DataDir: t.TempDir()}, strings.NewReader("not an rdb"))
	if err == nil || !strings.Contains(err.Error(), "not an RDB") {
		t.Errorf("restore of something else: %v", err)
	}
}
