package s3

import (
	"errors"
	"net"
	"net/url"
	"syscall"
	"testing"

	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/retry"
	"github.com/minio/minio-go/v7"
)

// TestMapError covers answers that a local MinIO does not give on demand.
func TestMapError(t *testing.T) {
	b := &Backend{bucket: "bkt"}
	resp := func(status int, code string) error {
		return minio.ErrorResponse{StatusCode: status, Code: code, Message: "msg"}
	}
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	cases := []struct {
		name      string
		err       error
		config    bool
		is        []error // the result must match these
		isNot     []error // and not these
		transient bool
	}{
		{"missing object", resp(404, minio.NoSuchKey), false, []error{repo.ErrNotFound}, []error{ErrNoBucket}, false},
		{"missing bucket, config", resp(404, minio.NoSuchBucket), true, []error{repo.ErrNotFound, ErrNoBucket}, nil, false},
		{"missing bucket, other file", resp(404, minio.NoSuchBucket), false, []error{ErrNoBucket}, []error{repo.ErrNotFound}, false},
		{"access denied", resp(403, minio.AccessDenied), false, []error{ErrAccessDenied}, []error{repo.ErrNotFound}, false},
		{"unknown key", resp(403, minio.InvalidAccessKeyID), true, []error{ErrAccessDenied}, []error{repo.ErrNotFound}, false},
		{"expired token", resp(400, "ExpiredToken"), false, []error{ErrAccessDenied}, nil, false},
		{"slow down", resp(503, "SlowDown"), false, nil, []error{repo.ErrNotFound, ErrAccessDenied}, true},
		{"too many requests", resp(429, "TooManyRequests"), false, nil, nil, true},
		{"internal error", resp(500, minio.InternalError), false, nil, nil, true},
		{"not initialized", resp(503, "XMinioServerNotInitialized"), true, nil, []error{repo.ErrNotFound}, true},
		{"bad gateway without body", resp(502, "502 Bad Gateway"), false, nil, nil, true},
		{"request timeout", resp(400, "RequestTimeout"), false, nil, nil, true},
		{"invalid range", resp(416, minio.InvalidRange), false, nil, []error{repo.ErrNotFound}, false},
		{"other client error", resp(400, minio.InvalidArgument), false, nil, []error{repo.ErrNotFound}, false},
		// Not an S3 answer: left to the retry package, which knows network errors.
		{"connection refused", refused, true, []error{syscall.ECONNREFUSED}, []error{repo.ErrNotFound}, true},
		// minio-go's own rewording of a connection closed before the answer.
		{"connection closed", &url.Error{Op: "Put", URL: "http://h/b/k", Err: errors.New("Connection closed by foreign host http://h/b/k. Retry again.")},
			false, nil, []error{repo.ErrNotFound}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := b.mapError(c.err, c.config)
			for _, want := range c.is {
				if !errors.Is(got, want) {
					t.Errorf("%v does not match %v", got, want)
				}
			}
			for _, not := range c.isNot {
				if errors.Is(got, not) {
					t.Errorf("%v matches %v", got, not)
				}
			}
			if retry.IsTransient(got) != c.transient {
				t.Errorf("%v: transient %v, want %v", got, !c.transient, c.transient)
			}
		})
	}
}
