package tests

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/tests/testenv"
)

// s3Env is an Env whose repository is bucket on srv, a server of the
// test's own.
func s3Env(t *testing.T, srv *testenv.S3Server, bucket string) *Env {
	e := newLocalEnv(t)
	e.Repo = srv.URL(bucket)
	e.Extra = srv.Env()
	return e
}

// writeRandomTree writes n files of size bytes of random data under dir.
func writeRandomTree(t *testing.T, dir string, n, size int, seed uint64) map[string][]byte {
	t.Helper()
	rng := rand.NewChaCha8([32]byte{byte(seed)})
	files := map[string][]byte{}
	for i := range n {
		b := make([]byte, size)
		_, _ = rng.Read(b)
		name := filepath.Join(dir, "d"+string(rune('a'+i%5)), "f"+string(rune('a'+i%26))+string(rune('a'+i/26)))
		WriteFile(t, name, b)
		files[name] = b
	}
	return files
}

func checkRestored(t *testing.T, target string, files map[string][]byte) {
	t.Helper()
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(target, name))
		if err != nil {
			t.Fatalf("restored %s: %v", name, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("restored %s differs from the source", name)
		}
	}
}

// TestS3Repository runs the daily commands against a real MinIO server:
// the bucket is made by init, and every exit code is what a local
// repository gives.
func TestS3Repository(t *testing.T) {
	srv := testenv.MinIO(t)
	e := s3Env(t, srv, "cairn-e2e")
	e.Fails(10, "snapshots")
	e.Must("init")
	e.Fails(1, "init")

	src := filepath.Join(e.Dir, "src")
	files := writeRandomTree(t, src, 30, 300<<10, 1)
	first := Summary(t, e.Must("backup", "--json", src).Stdout)
	if first["files_new"].(float64) != 30 {
		t.Fatalf("first backup: %v", first)
	}
	// The directories above src change (the cache lives next to it): only
	// their trees may be new.
	second := Summary(t, e.Must("backup", "--json", src).Stdout)
	if second["files_unmodified"].(float64) != 30 || second["data_blobs"].(float64) != 0 {
		t.Fatalf("unchanged backup: %v", second)
	}
	// Trees, snapshots and the index come from the local cache.
	if read := second["repository_bytes_read"].(float64); read > 64<<10 {
		t.Fatalf("unchanged backup read %.0f bytes from the repository, want almost nothing", read)
	}
	if n := len(e.Snapshots()); n != 2 {
		t.Fatalf("%d snapshots, want 2", n)
	}
	target := filepath.Join(e.Dir, "target")
	e.Must("restore", "latest", "--target", target, "--verify")
	checkRestored(t, target, files)
	for name, want := range files {
		if got := e.Must("dump", "latest", name).Stdout; got != string(want) {
			t.Fatalf("dump %s differs from the source", name)
		}
		break
	}
	e.Must("ls", "latest")
	e.Must("key", "list")

	// The local cache is only an accelerator: without it, the same answers.
	if err := os.RemoveAll(e.Cache); err != nil {
		t.Fatal(err)
	}
	third := Summary(t, e.Must("backup", "--json", src).Stdout)
	if third["files_unmodified"].(float64) != 30 {
		t.Fatalf("backup after the cache was deleted: %v", third)
	}

	wrongPassword := *e
	wrongPassword.Password = "not the password"
	wrongPassword.Fails(12, "snapshots")

	wrongKey := *e
	wrongKey.Extra = append(srv.Env(), "AWS_SECRET_ACCESS_KEY=wrong-secret-key")
	r := wrongKey.Fails(1, "snapshots")
	if !strings.Contains(r.Stderr, "access denied") || strings.Count(strings.TrimSpace(r.Stderr), "\n") != 0 {
		t.Fatalf("wrong credentials: want one line saying access denied, got %q", r.Stderr)
	}
	if strings.Contains(r.Stderr, "wrong-secret-key") || strings.Contains(r.Stderr, srv.SecretKey) {
		t.Fatalf("a secret reached the error: %q", r.Stderr)
	}
}

// TestS3ServerRestartMidBackup: the server goes away in the middle of a
// backup and comes back; retries carry the backup through, and the
// repository restores what was backed up.
func TestS3ServerRestartMidBackup(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts a server")
	}
	srv := testenv.MinIO(t)
	e := s3Env(t, srv, "cairn-restart")
	e.Must("init")
	src := filepath.Join(e.Dir, "src")
	files := writeRandomTree(t, src, 40, 1<<20, 2)

	cmd := e.Cmd("backup", src)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// A trigger, not a measurement: the backup is under way by then.
	time.Sleep(300 * time.Millisecond)
	srv.Stop()
	time.Sleep(2 * time.Second)
	srv.Start()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("backup across a 2 s server restart: %v\n%s", err, stderr.String())
	}
	target := filepath.Join(e.Dir, "target")
	e.Must("restore", "latest", "--target", target)
	checkRestored(t, target, files)
}
