// Package s3 is a repository backend on an S3 bucket (AWS, MinIO, Ceph RGW
// and other S3 servers), through minio-go.
//
// A repository lives at s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX] and its
// files are objects named PREFIX/config, PREFIX/keys/<ID>,
// PREFIX/data/<ID[0:2]>/<ID> and so on, the layout of docs/format.md.
// Requests use path-style addressing, which every S3 server accepts.
//
// Errors are mapped once, here: a missing object is repo.ErrNotFound, a
// missing bucket ErrNoBucket, refused credentials ErrAccessDenied; the
// server's transient failures are marked for the retry package, which the
// caller wraps around the backend. The client's own retries are off so that
// retry.Options alone decides how long to insist.
package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/retry"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"
)

var (
	// ErrNoBucket means the bucket does not exist. Stat and Load of the
	// config match repo.ErrNotFound too then, so that opening the
	// repository reports that there is none.
	ErrNoBucket = errors.New("bucket does not exist")
	// ErrAccessDenied means the server refused the credentials or the
	// request. It is permanent.
	ErrAccessDenied = errors.New("access denied")
)

// DefaultRegion is used when no region is configured.
const DefaultRegion = "us-east-1"

// Config says where the repository is and how to sign requests.
type Config struct {
	Endpoint string // HOST or HOST:PORT
	HTTPS    bool
	Bucket   string
	Prefix   string // "" for the bucket's root; no leading or trailing slash

	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string // for temporary credentials; may be empty
	Region          string // empty: DefaultRegion

	// Transport replaces the HTTP transport (for example for custom CAs);
	// nil uses minio-go's default.
	Transport http.RoundTripper
}

// ParseURL reads s3:http://HOST[:PORT]/BUCKET[/PREFIX] (or s3:https://…)
// into the location part of a Config. Credentials are never taken from the
// URL: they would show up in process lists and messages.
func ParseURL(s string) (Config, error) {
	const want = "want s3:http://HOST[:PORT]/BUCKET[/PREFIX] or s3:https://…"
	rest, ok := strings.CutPrefix(s, "s3:")
	if !ok {
		return Config{}, fmt.Errorf("repository %q is not an s3: URL; %s", s, want)
	}
	// Messages show the URL only once it is known to hold no credentials.
	u, err := url.Parse(rest)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return Config{}, fmt.Errorf("invalid s3 repository URL: %v; %s", err, want)
	}
	if u.User != nil {
		return Config{}, errors.New("invalid s3 repository URL: credentials in the URL are not supported; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	}
	if u.Opaque != "" {
		return Config{}, fmt.Errorf("invalid s3 repository URL: %s", want)
	}
	shown := "s3:" + u.String()
	var cfg Config
	switch u.Scheme {
	case "http":
	case "https":
		cfg.HTTPS = true
	case "":
		return Config{}, fmt.Errorf("s3 repository %s: no scheme; %s", shown, want)
	default:
		return Config{}, fmt.Errorf("s3 repository %s: scheme %q is not http or https", shown, u.Scheme)
	}
	if u.Host == "" || u.Hostname() == "" {
		return Config{}, fmt.Errorf("s3 repository %s: no host; %s", shown, want)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return Config{}, fmt.Errorf("s3 repository %s: unexpected query or fragment; %s", shown, want)
	}
	cfg.Endpoint = u.Host
	p := strings.Trim(u.Path, "/")
	if p == "" {
		return Config{}, fmt.Errorf("s3 repository %s: no bucket; %s", shown, want)
	}
	cfg.Bucket, cfg.Prefix, _ = strings.Cut(p, "/")
	if err := s3utils.CheckValidBucketNameStrict(cfg.Bucket); err != nil {
		return Config{}, fmt.Errorf("s3 repository %s: invalid bucket name %q: %v", shown, cfg.Bucket, err)
	}
	if err := checkPrefix(cfg.Prefix); err != nil {
		return Config{}, fmt.Errorf("s3 repository %s: %w", shown, err)
	}
	return cfg, nil
}

func checkPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	for _, el := range strings.Split(prefix, "/") {
		if el == "" || el == "." || el == ".." {
			return fmt.Errorf("invalid prefix %q: empty, . or .. path element", prefix)
		}
	}
	return nil
}

// FromEnv sets the credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
// and AWS_SESSION_TOKEN, and the region from AWS_DEFAULT_REGION (or
// AWS_REGION), as read by getenv (os.Getenv in the program). Empty
// variables leave the fields as they are.
func (c *Config) FromEnv(getenv func(string) string) {
	set := func(dst *string, names ...string) {
		for _, n := range names {
			if v := getenv(n); v != "" {
				*dst = v
				return
			}
		}
	}
	set(&c.AccessKeyID, "AWS_ACCESS_KEY_ID")
	set(&c.SecretAccessKey, "AWS_SECRET_ACCESS_KEY")
	set(&c.SessionToken, "AWS_SESSION_TOKEN")
	set(&c.Region, "AWS_DEFAULT_REGION", "AWS_REGION")
}

// Location returns the repository URL, without credentials.
func (c Config) Location() string {
	scheme := "http"
	if c.HTTPS {
		scheme = "https"
	}
	loc := "s3:" + scheme + "://" + c.Endpoint + "/" + c.Bucket
	if c.Prefix != "" {
		loc += "/" + c.Prefix
	}
	return loc
}

// Backend stores the repository's files as objects.
type Backend struct {
	client    *minio.Client
	core      minio.Core // for GetObject with the response headers
	transport http.RoundTripper
	bucket    string
	region    string
	prefix    string // "" or ending in "/"
	location  string
	partSize  uint64 // files larger than this are uploaded in parts
}

var _ repo.Backend = (*Backend)(nil)

// Open returns a backend for cfg. It does not contact the server.
func Open(cfg Config) (*Backend, error) {
	if cfg.AccessKeyID == "" || cfg.SecretAccessKey == "" {
		return nil, fmt.Errorf("s3 repository %s: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", cfg.Location())
	}
	if cfg.Endpoint == "" || cfg.Bucket == "" {
		return nil, fmt.Errorf("s3 repository %s: endpoint and bucket are required", cfg.Location())
	}
	if err := checkPrefix(cfg.Prefix); err != nil {
		return nil, fmt.Errorf("s3 repository %s: %w", cfg.Location(), err)
	}
	if cfg.Region == "" {
		cfg.Region = DefaultRegion
	}
	tr := cfg.Transport
	if tr == nil {
		t, err := minio.DefaultTransport(cfg.HTTPS)
		if err != nil {
			return nil, fmt.Errorf("s3 transport: %w", err)
		}
		tr = t
	}
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(cfg.AccessKeyID, cfg.SecretAccessKey, cfg.SessionToken),
		Secure:       cfg.HTTPS,
		Transport:    tr,
		Region:       cfg.Region,
		BucketLookup: minio.BucketLookupPath,
		MaxRetries:   1, // the retry package decides
	})
	if err != nil {
		return nil, fmt.Errorf("s3 repository %s: %w", cfg.Location(), err)
	}
	b := &Backend{
		client:    client,
		core:      minio.Core{Client: client},
		transport: tr,
		bucket:    cfg.Bucket,
		region:    cfg.Region,
		location:  cfg.Location(),
		// Packs (16 MiB and a bit) go up in one request; bigger files in
		// parts, each buffered in memory by the client.
		partSize: 32 << 20,
	}
	if cfg.Prefix != "" {
		b.prefix = cfg.Prefix + "/"
	}
	return b, nil
}

func (b *Backend) Location() string { return b.location }

// Close drops idle connections.
func (b *Backend) Close() error {
	if t, ok := b.transport.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
	return nil
}

// Create makes the bucket when it does not exist (for init).
func (b *Backend) Create(ctx context.Context) error {
	ok, err := b.client.BucketExists(ctx, b.bucket)
	if err != nil {
		return fmt.Errorf("check bucket %s: %w", b.bucket, b.mapError(err, false))
	}
	if ok {
		return nil
	}
	err = b.client.MakeBucket(ctx, b.bucket, minio.MakeBucketOptions{Region: b.region})
	var er minio.ErrorResponse
	if errors.As(err, &er) && er.Code == minio.BucketAlreadyOwnedByYou {
		return nil // made meanwhile by another init
	}
	if err != nil {
		return fmt.Errorf("create bucket %s: %w", b.bucket, b.mapError(err, false))
	}
	return nil
}

// key is the object name of h.
func (b *Backend) key(h repo.Handle) (string, error) {
	if h.Type == repo.ConfigFile {
		return b.prefix + "config", nil
	}
	if h.Name == "" || strings.Contains(h.Name, "/") || h.Name == "." || h.Name == ".." {
		return "", retry.Permanent(fmt.Errorf("invalid file name %q", h.Name))
	}
	if h.Type == repo.PackFile && len(h.Name) >= 2 {
		return b.prefix + "data/" + h.Name[:2] + "/" + h.Name, nil
	}
	return b.prefix + string(h.Type) + "/" + h.Name, nil
}

func (b *Backend) Save(ctx context.Context, h repo.Handle, r io.ReaderAt, size int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	key, err := b.key(h)
	if err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	// S3 makes an object visible only once it is complete, so a failed or
	// interrupted upload leaves nothing behind.
	_, err = b.client.PutObject(ctx, b.bucket, key, io.NewSectionReader(r, 0, size), size, minio.PutObjectOptions{
		ContentType: "application/octet-stream",
		PartSize:    b.partSize,
		NumThreads:  2,
	})
	if err != nil {
		return fmt.Errorf("save %s: %w", h, b.mapError(err, false))
	}
	return nil
}

func (b *Backend) Load(ctx context.Context, h repo.Handle, offset, length int64, fn func(io.Reader) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if offset < 0 || length < 0 {
		return retry.Permanent(fmt.Errorf("load %s: invalid range %d+%d", h, offset, length))
	}
	key, err := b.key(h)
	if err != nil {
		return fmt.Errorf("load %s: %w", h, err)
	}
	var opts minio.GetObjectOptions
	switch {
	case length > 0:
		err = opts.SetRange(offset, offset+length-1)
	case offset > 0:
		err = opts.SetRange(offset, 0)
	}
	if err != nil {
		return retry.Permanent(fmt.Errorf("load %s: %w", h, err))
	}
	body, info, hdr, err := b.core.GetObject(ctx, b.bucket, key, opts)
	if err != nil {
		var er minio.ErrorResponse
		if errors.As(err, &er) && er.Code == minio.InvalidRange && length == 0 {
			// "From offset to the end" with the offset at the end is an
			// empty read, which S3 calls an unsatisfiable range.
			if fi, serr := b.Stat(ctx, h); serr == nil && fi.Size == offset {
				return fn(bytes.NewReader(nil))
			}
		}
		return fmt.Errorf("load %s: %w", h, b.mapError(err, h.Type == repo.ConfigFile))
	}
	defer body.Close()

	var r io.Reader = body
	if offset > 0 || length > 0 {
		// S3 shortens a range that runs past the end; a short read would
		// look whole, so a range that does not fit is an error.
		if cr := hdr.Get("Content-Range"); cr != "" {
			start, end, ok := parseContentRange(cr)
			if !ok || start != offset {
				return retry.Permanent(fmt.Errorf("load %s: unexpected Content-Range %q for range %d+%d", h, cr, offset, length))
			}
			if length > 0 && end-start+1 != length {
				return retry.Permanent(fmt.Errorf("load %s: range %d+%d beyond the end (%s)", h, offset, length, cr))
			}
		} else {
			// The server ignored the range and sent the whole object.
			if info.Size < 0 {
				return retry.Permanent(fmt.Errorf("load %s: the server ignored the range and sent no size", h))
			}
			if offset > info.Size || length > info.Size-offset {
				return retry.Permanent(fmt.Errorf("load %s: range %d+%d beyond size %d", h, offset, length, info.Size))
			}
			if _, err := io.CopyN(io.Discard, body, offset); err != nil {
				return retry.Transient(fmt.Errorf("load %s: %w", h, err))
			}
			if length > 0 {
				r = io.LimitReader(body, length)
			}
		}
	}
	return fn(streamReader{r})
}

// parseContentRange reads "bytes START-END/TOTAL" (TOTAL may be "*").
func parseContentRange(s string) (start, end int64, ok bool) {
	spec, found := strings.CutPrefix(s, "bytes ")
	if !found {
		return 0, 0, false
	}
	spec, _, found = strings.Cut(spec, "/")
	if !found {
		return 0, 0, false
	}
	a, b, found := strings.Cut(spec, "-")
	if !found {
		return 0, 0, false
	}
	start, err1 := strconv.ParseInt(a, 10, 64)
	end, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || start < 0 || end < start {
		return 0, 0, false
	}
	return start, end, true
}

// streamReader marks read errors as transient: the data are there, the
// connection broke, and reading again from the start will do.
type streamReader struct{ r io.Reader }

func (s streamReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		err = retry.Transient(err)
	}
	return n, err
}

func (b *Backend) Stat(ctx context.Context, h repo.Handle) (repo.FileInfo, error) {
	key, err := b.key(h)
	if err != nil {
		return repo.FileInfo{}, fmt.Errorf("stat %s: %w", h, err)
	}
	info, err := b.client.StatObject(ctx, b.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return repo.FileInfo{}, fmt.Errorf("stat %s: %w", h, b.mapError(err, h.Type == repo.ConfigFile))
	}
	return repo.FileInfo{Name: h.Name, Size: info.Size}, nil
}

// List walks PREFIX/<t>/ recursively; the client follows the listing's
// continuation tokens, a thousand names per request.
func (b *Backend) List(ctx context.Context, t repo.FileType, fn func(repo.FileInfo) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if t == repo.ConfigFile {
		fi, err := b.Stat(ctx, repo.Handle{Type: t})
		if errors.Is(err, repo.ErrNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("list %s: %w", t, err)
		}
		fi.Name = "config"
		return fn(fi)
	}
	dir := b.prefix + string(t) + "/"
	for obj := range b.client.ListObjectsIter(ctx, b.bucket, minio.ListObjectsOptions{Prefix: dir, Recursive: true}) {
		if obj.Err != nil {
			if err := ctx.Err(); err != nil {
				return err
			}
			return fmt.Errorf("list %s: %w", t, b.mapError(obj.Err, false))
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		name, ok := b.nameOf(t, strings.TrimPrefix(obj.Key, dir))
		if !ok {
			continue
		}
		if err := fn(repo.FileInfo{Name: name, Size: obj.Size}); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// nameOf returns the file name of an object below its type's directory,
// and false for objects that are not repository files.
func (b *Backend) nameOf(t repo.FileType, rel string) (string, bool) {
	if t == repo.PackFile {
		sub, name, ok := strings.Cut(rel, "/")
		if !ok || len(name) < 2 || name[:2] != sub || strings.Contains(name, "/") {
			return "", false
		}
		return name, true
	}
	if rel == "" || strings.Contains(rel, "/") {
		return "", false
	}
	return rel, true
}

func (b *Backend) Remove(ctx context.Context, h repo.Handle) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	key, err := b.key(h)
	if err != nil {
		return fmt.Errorf("remove %s: %w", h, err)
	}
	// S3 answers success for an absent object.
	if err := b.client.RemoveObject(ctx, b.bucket, key, minio.RemoveObjectOptions{}); err != nil {
		return fmt.Errorf("remove %s: %w", h, b.mapError(err, false))
	}
	return nil
}

// mapError turns the server's answer into the repository's terms: it is the
// one place where an S3 error becomes repo.ErrNotFound. Errors without an
// S3 answer (network, context) are returned as they are, for the retry
// package to judge.
//
// config says that err is the answer for the config, whose absence, even
// of the whole bucket, means that there is no repository.
func (b *Backend) mapError(err error, config bool) error {
	var er minio.ErrorResponse
	if !errors.As(err, &er) {
		// minio-go replaces the io.EOF of a connection the server closed
		// with a message of its own, which only it recognises.
		var ue *url.Error
		if errors.As(err, &ue) && strings.HasPrefix(ue.Err.Error(), "Connection closed by foreign host") {
			return retry.Transient(err)
		}
		return err
	}
	detail := fmt.Errorf("%w (%s, HTTP %d)", err, er.Code, er.StatusCode)
	switch code, status := er.Code, er.StatusCode; {
	case code == minio.NoSuchKey:
		return repo.ErrNotFound
	case code == minio.NoSuchBucket:
		if config {
			return fmt.Errorf("%w (%w: %s)", repo.ErrNotFound, ErrNoBucket, b.bucket)
		}
		return retry.Permanent(fmt.Errorf("%w: %s", ErrNoBucket, b.bucket))
	case status == http.StatusUnauthorized || status == http.StatusForbidden ||
		code == minio.AccessDenied || code == minio.InvalidAccessKeyID || code == minio.SignatureDoesNotMatch ||
		code == "ExpiredToken" || code == "InvalidToken" || code == minio.RequestTimeTooSkewed:
		return retry.Permanent(fmt.Errorf("%w: %v; check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the bucket's permissions", ErrAccessDenied, detail))
	case code == minio.InvalidRange || status == http.StatusRequestedRangeNotSatisfiable:
		return retry.Permanent(fmt.Errorf("range beyond the end: %w", detail))
	case status >= 500 || status == http.StatusTooManyRequests || status == http.StatusRequestTimeout ||
		code == "SlowDown" || code == "RequestTimeout" || code == "Throttling" || code == "ThrottlingException" ||
		code == "RequestLimitExceeded" || code == "RequestThrottled" || code == minio.InternalError ||
		code == minio.IncompleteBody || code == minio.BadDigest || code == minio.XAmzContentSHA256Mismatch:
		// BadDigest and friends: the body was damaged on the way.
		return retry.Transient(detail)
	default:
		return retry.Permanent(detail)
	}
}
