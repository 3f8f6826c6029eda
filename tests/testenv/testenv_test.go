package testenv_test

import (
	"bytes"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/cairn-backup/cairn/tests/testenv"
)

func ready(s *testenv.S3Server) error {
	resp, err := http.Get("http://" + s.Endpoint + "/minio/health/ready")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	return nil
}

// cmdlinesWith returns the command lines that contain needle.
func cmdlinesWith(t *testing.T, needle string) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	var out []string
	for _, e := range entries {
		data, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !bytes.Contains(data, []byte(needle)) {
			continue
		}
		out = append(out, string(bytes.ReplaceAll(data, []byte{0}, []byte{' '})))
	}
	return out
}

func TestMinIO(t *testing.T) {
	s := testenv.MinIO(t)
	if err := ready(s); err != nil {
		t.Fatalf("MinIO returned but is not ready: %v", err)
	}
	if !strings.HasPrefix(s.URL("bkt"), "s3:http://127.0.0.1:") || !strings.HasSuffix(s.URL("bkt"), "/bkt") {
		t.Errorf("URL: %s", s.URL("bkt"))
	}
	if len(s.AccessKey) < 3 || len(s.SecretKey) < 8 {
		t.Errorf("credentials too short for MinIO: %q", s.AccessKey)
	}

	// The secret must not be visible in the process list.
	lines := cmdlinesWith(t, s.Endpoint)
	if len(lines) == 0 {
		t.Error("no process has the endpoint on its command line")
	}
	for _, l := range lines {
		if strings.Contains(l, s.SecretKey) || strings.Contains(l, s.AccessKey) {
			t.Errorf("credentials on a command line: %s", l)
		}
	}

	s.Stop()
	if err := ready(s); err == nil {
		t.Fatal("MinIO still answers after Stop")
	}
	s.Stop() // stopping twice is harmless
	endpoint := s.Endpoint
	s.Start()
	if s.Endpoint != endpoint {
		t.Errorf("restarted on %s, want %s", s.Endpoint, endpoint)
	}
	if err := ready(s); err != nil {
		t.Fatalf("not ready after Start: %v", err)
	}
}
