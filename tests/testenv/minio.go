package testenv

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

const minioInstall = "GOBIN=$PWD/.cache/testbin go install github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c"

// S3Server is a running MinIO server with one root user.
type S3Server struct {
	Endpoint  string // host:port of the S3 API, over plain HTTP
	AccessKey string
	SecretKey string
	Region    string

	t    testing.TB
	proc *process
}

// MinIO starts a MinIO server for the test and stops it when the test ends.
// Its data lives in a directory of t.TempDir(); its log is shown if the test
// fails.
func MinIO(t testing.TB) *S3Server {
	t.Helper()
	s, err := StartMinIO(MinIOBinary(t), t.TempDir())
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	s.t, s.proc.t = t, t
	s.proc.register()
	return s
}

// MinIOBinary returns the path of the minio binary, or ends the test:
// skipped normally, failed in CI.
func MinIOBinary(t testing.TB) string {
	t.Helper()
	return findBinary(t, "minio", minioInstall)
}

// StartMinIO starts bin (see MinIOBinary) as a server with its data and log
// in dir, for a server that outlives any one test, such as one shared by a
// whole test binary. The caller stops it with Stop and removes dir; Start
// is only for servers from MinIO.
func StartMinIO(bin, dir string) (*S3Server, error) {
	s := &S3Server{
		AccessKey: "cairn" + randomHex(4),
		SecretKey: randomHex(16),
		Region:    "us-east-1",
	}
	// A free port can be taken by someone else before MinIO binds it:
	// try again with new ports.
	var err error
	for range 3 {
		var api, console int
		if api, err = pickPort(); err != nil {
			continue
		}
		if console, err = pickPort(); err != nil || api == console {
			continue
		}
		s.Endpoint = hostPort(api)
		s.proc = &process{
			name: "MinIO",
			bin:  bin,
			args: []string{"server",
				"--address", s.Endpoint, "--console-address", hostPort(console),
				"--certs-dir", filepath.Join(dir, "certs"), filepath.Join(dir, "data")},
			// Credentials go through the environment, never the command
			// line, which every user of the machine can read.
			env: []string{
				"MINIO_ROOT_USER=" + s.AccessKey, "MINIO_ROOT_PASSWORD=" + s.SecretKey,
				"MINIO_BROWSER=off", "MINIO_UPDATE=off", "HOME=" + dir,
			},
			envDrop: []string{"MINIO_", "HOME="},
			ready:   s.ready,
			stopSig: syscall.SIGTERM,
			logPath: filepath.Join(dir, "minio.log"),
		}
		if err = s.proc.start(); err == nil {
			return s, nil
		}
	}
	if s.proc == nil {
		return nil, fmt.Errorf("start MinIO: %v", err)
	}
	return nil, fmt.Errorf("start MinIO: %v\nlast lines of the MinIO log:\n%s", err, s.proc.logTail(50))
}

// ready waits for the health check, then for a signed request to succeed:
// MinIO reports ready while it still answers XMinioServerNotInitialized
// (503) to authenticated requests for a moment.
func (s *S3Server) ready(ctx context.Context) error {
	if err := httpReady("http://" + s.Endpoint + "/minio/health/ready")(ctx); err != nil {
		return err
	}
	c, err := minio.New(s.Endpoint, &minio.Options{
		Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""), Region: s.Region, MaxRetries: 1,
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = c.ListBuckets(ctx)
	return err
}

// URL returns the cairn repository URL of bucket on this server.
func (s *S3Server) URL(bucket string) string {
	return "s3:http://" + s.Endpoint + "/" + bucket
}

// Env returns the environment variables that give a client this server's
// credentials and region.
func (s *S3Server) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + s.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s.SecretKey,
		"AWS_DEFAULT_REGION=" + s.Region,
	}
}

// Stop stops the server (SIGTERM) and waits for it to exit. Its port and
// data stay reserved for Start. Stopping a stopped server does nothing.
func (s *S3Server) Stop() { s.proc.stop() }

// LogTail returns the last n lines of the server's log.
func (s *S3Server) LogTail(n int) string { return s.proc.logTail(n) }

// Start starts a stopped server again on the same port and data directory
// and waits until it is ready. Call it from the test's goroutine: it fails
// the test when the server does not come back.
func (s *S3Server) Start() {
	s.t.Helper()
	if s.proc.running() {
		return
	}
	var err error
	// The port was ours a moment ago; retry briefly in case the old socket
	// is still being released.
	for range 3 {
		if err = s.proc.start(); err == nil {
			return
		}
		time.Sleep(time.Second)
	}
	s.t.Fatalf("testenv: restart MinIO on %s: %v\nlast lines of the log:\n%s", s.Endpoint, err, s.proc.logTail(50))
}
