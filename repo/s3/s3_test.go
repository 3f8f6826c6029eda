package s3_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/repotest"
	"github.com/cairn-backup/cairn/repo/retry"
	"github.com/cairn-backup/cairn/repo/s3"
	"github.com/cairn-backup/cairn/tests/testenv"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// fastKDF keeps key derivation cheap in tests.
var fastKDF = crypto.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

var bucketSeq atomic.Int64

// newBucketName returns a bucket name no other test uses.
func newBucketName() string { return fmt.Sprintf("cairn-test-%d", bucketSeq.Add(1)) }

// config returns the configuration for bucket and prefix on srv.
func config(t *testing.T, srv *testenv.S3Server, bucket, prefix string) s3.Config {
	t.Helper()
	u := srv.URL(bucket)
	if prefix != "" {
		u += "/" + prefix
	}
	cfg, err := s3.ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	cfg.AccessKeyID, cfg.SecretAccessKey = srv.AccessKey, srv.SecretKey
	return cfg
}

func open(t *testing.T, cfg s3.Config) *s3.Backend {
	t.Helper()
	be, err := s3.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	return be
}

// created opens a backend on a new bucket, made by Create.
func created(t *testing.T, srv *testenv.S3Server, prefix string) *s3.Backend {
	t.Helper()
	be := open(t, config(t, srv, newBucketName(), prefix))
	if err := be.Create(context.Background()); err != nil {
		t.Fatalf("create: %v", err)
	}
	return be
}

// rawClient talks to srv directly, to check what the backend stored.
func rawClient(t *testing.T, srv *testenv.S3Server) *minio.Client {
	t.Helper()
	c, err := minio.New(srv.Endpoint, &minio.Options{
		Creds: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""), Region: srv.Region,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func saveBytes(ctx context.Context, be repo.Backend, h repo.Handle, data []byte) error {
	return be.Save(ctx, h, bytes.NewReader(data), int64(len(data)))
}

func hashName(data []byte) string { return fmt.Sprintf("%x", sha256.Sum256(data)) }

func TestBackend(t *testing.T) {
	srv := testenv.MinIO(t)
	repotest.Run(t, func(t *testing.T) repo.Backend { return created(t, srv, "") })
}

// Each subtest gets its own prefix in one shared bucket, so the suite also
// checks that prefixes keep repositories apart.
func TestBackendWithPrefix(t *testing.T) {
	srv := testenv.MinIO(t)
	bucket := newBucketName()
	if err := open(t, config(t, srv, bucket, "")).Create(context.Background()); err != nil {
		t.Fatal(err)
	}
	n := 0
	repotest.Run(t, func(t *testing.T) repo.Backend {
		n++
		return open(t, config(t, srv, bucket, fmt.Sprintf("backups/r%d", n)))
	})
}

// The suite through the retry wrapper, as the program uses the backend.
func TestBackendWithRetry(t *testing.T) {
	srv := testenv.MinIO(t)
	repotest.Run(t, func(t *testing.T) repo.Backend {
		return retry.New(created(t, srv, ""), retry.Options{MaxElapsed: time.Minute})
	})
}

// TestPrefixLayout checks the object names against docs/format.md.
func TestPrefixLayout(t *testing.T) {
	srv := testenv.MinIO(t)
	ctx := context.Background()
	bucket := newBucketName()
	be := open(t, config(t, srv, bucket, "site/one"))
	if err := be.Create(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := be.Location(), srv.URL(bucket)+"/site/one"; got != want {
		t.Errorf("Location = %q, want %q", got, want)
	}
	want := []string{}
	for _, ft := range []repo.FileType{repo.ConfigFile, repo.KeyFile, repo.PackFile, repo.IndexFile, repo.SnapshotFile, repo.LockFile} {
		data := []byte("content of " + string(ft))
		h := repo.Handle{Type: ft}
		switch ft {
		case repo.ConfigFile:
			want = append(want, "site/one/config")
		case repo.PackFile:
			h.Name = hashName(data)
			want = append(want, "site/one/data/"+h.Name[:2]+"/"+h.Name)
		default:
			h.Name = hashName(data)
			want = append(want, "site/one/"+string(ft)+"/"+h.Name)
		}
		if err := saveBytes(ctx, be, h, data); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for obj := range rawClient(t, srv).ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
		if obj.Err != nil {
			t.Fatal(obj.Err)
		}
		got = append(got, obj.Key)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("objects in the bucket:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// A shorter prefix and the bucket's root are other repositories.
	for _, prefix := range []string{"", "site"} {
		other := open(t, config(t, srv, bucket, prefix))
		if _, err := other.Stat(ctx, repo.Handle{Type: repo.ConfigFile}); !errors.Is(err, repo.ErrNotFound) {
			t.Errorf("prefix %q: stat config: %v, want ErrNotFound", prefix, err)
		}
		for _, ft := range []repo.FileType{repo.KeyFile, repo.PackFile, repo.SnapshotFile} {
			if err := other.List(ctx, ft, func(fi repo.FileInfo) error {
				return fmt.Errorf("prefix %q lists %s/%s of another prefix", prefix, ft, fi.Name)
			}); err != nil {
				t.Error(err)
			}
		}
	}
}

// TestMissingBucket: a bucket that does not exist is no repository, and
// Create makes it.
func TestMissingBucket(t *testing.T) {
	srv := testenv.MinIO(t)
	ctx := context.Background()
	be := open(t, config(t, srv, newBucketName(), "repo"))

	_, err := be.Stat(ctx, repo.Handle{Type: repo.ConfigFile})
	if !errors.Is(err, repo.ErrNotFound) {
		t.Errorf("stat config without a bucket: %v, want ErrNotFound", err)
	}
	if _, err := repo.Open(ctx, be, []byte("pw")); !errors.Is(err, repo.ErrNoRepository) {
		t.Errorf("repo.Open without a bucket: %v, want ErrNoRepository", err)
	}
	// Any other file: the bucket's absence is reported as such, not as one
	// missing file, and it is not worth retrying.
	err = be.List(ctx, repo.KeyFile, func(repo.FileInfo) error { return nil })
	if !errors.Is(err, s3.ErrNoBucket) || errors.Is(err, repo.ErrNotFound) || retry.IsTransient(err) {
		t.Errorf("list without a bucket: %v, want ErrNoBucket only, permanent", err)
	}
	h := repo.Handle{Type: repo.SnapshotFile, Name: hashName([]byte("s"))}
	if err := saveBytes(ctx, be, h, []byte("s")); !errors.Is(err, s3.ErrNoBucket) || retry.IsTransient(err) {
		t.Errorf("save without a bucket: %v, want ErrNoBucket, permanent", err)
	}
	if _, err := repo.ReadAll(ctx, be, h); !errors.Is(err, s3.ErrNoBucket) || errors.Is(err, repo.ErrNotFound) {
		t.Errorf("load without a bucket: %v, want ErrNoBucket", err)
	}

	if err := be.Create(ctx); err != nil {
		t.Fatalf("create: %v", err)
	}
	if err := be.Create(ctx); err != nil {
		t.Fatalf("create when the bucket exists: %v", err)
	}
	if err := saveBytes(ctx, be, h, []byte("s")); err != nil {
		t.Fatalf("save after create: %v", err)
	}
	if got, err := repo.ReadAll(ctx, be, h); err != nil || string(got) != "s" {
		t.Fatalf("load after create: %q, %v", got, err)
	}
	bucket := strings.TrimSuffix(strings.TrimPrefix(be.Location(), "s3:http://"+srv.Endpoint+"/"), "/repo")
	if found, err := rawClient(t, srv).BucketExists(ctx, bucket); err != nil || !found {
		t.Errorf("bucket %s after create: exists %v, %v", bucket, found, err)
	}

	// init on a new bucket, then open: the whole path the program takes.
	be2 := open(t, config(t, srv, newBucketName(), ""))
	if err := be2.Create(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Init(ctx, be2, []byte("pw"), repo.InitOptions{KDF: fastKDF}); err != nil {
		t.Fatalf("init: %v", err)
	}
	if _, err := repo.Open(ctx, be2, []byte("pw")); err != nil {
		t.Fatalf("open after init: %v", err)
	}
}

// TestWrongCredentials: refused credentials fail every operation at once
// with ErrAccessDenied, never ErrNotFound, even through the retry wrapper.
func TestWrongCredentials(t *testing.T) {
	srv := testenv.MinIO(t)
	ctx := context.Background()
	good := created(t, srv, "")
	h := repo.Handle{Type: repo.IndexFile, Name: hashName([]byte("i"))}
	if err := saveBytes(ctx, good, h, []byte("i")); err != nil {
		t.Fatal(err)
	}
	bucket := strings.TrimPrefix(good.Location(), "s3:http://"+srv.Endpoint+"/")

	for name, mutate := range map[string]func(*s3.Config){
		"wrong secret":     func(c *s3.Config) { c.SecretAccessKey += "x" },
		"unknown key":      func(c *s3.Config) { c.AccessKeyID = "nobody" },
		"bad token":        func(c *s3.Config) { c.SessionToken = "not-a-token" },
		"wrong everything": func(c *s3.Config) { c.AccessKeyID, c.SecretAccessKey = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG" },
	} {
		t.Run(name, func(t *testing.T) {
			cfg := config(t, srv, bucket, "")
			mutate(&cfg)
			raw := open(t, cfg)
			be := retry.New(raw, retry.Options{Notify: func(op string, err error, _ time.Duration) {
				t.Errorf("%s retried after %v", op, err)
			}})
			check := func(op string, err error) {
				t.Helper()
				if !errors.Is(err, s3.ErrAccessDenied) || errors.Is(err, repo.ErrNotFound) || retry.IsTransient(err) {
					t.Errorf("%s: %v, want a permanent ErrAccessDenied", op, err)
				}
				if strings.Contains(fmt.Sprint(err), cfg.SecretAccessKey) {
					t.Errorf("%s: the error shows the secret key", op)
				}
			}
			_, err := be.Stat(ctx, repo.Handle{Type: repo.ConfigFile})
			check("stat config", err)
			_, err = be.Stat(ctx, h)
			check("stat", err)
			_, err = repo.ReadAll(ctx, be, h)
			check("load", err)
			check("save", saveBytes(ctx, be, repo.Handle{Type: repo.LockFile, Name: "l"}, []byte("l")))
			check("list", be.List(ctx, repo.IndexFile, func(repo.FileInfo) error { return nil }))
			check("remove", be.Remove(ctx, h))
			check("create", raw.Create(ctx))
			_, err = repo.Open(ctx, be, []byte("pw"))
			check("repo.Open", err)
		})
	}
	if _, err := good.Stat(ctx, h); err != nil {
		t.Errorf("the file is gone after the refused remove: %v", err)
	}
}

// TestListMany lists more files than one listing page holds.
func TestListMany(t *testing.T) {
	srv := testenv.MinIO(t)
	ctx := context.Background()
	be := created(t, srv, "p")
	const n = 3000
	want := map[string]int64{}
	var mu sync.Mutex
	jobs := make(chan int)
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := range jobs {
				data := []byte(fmt.Sprint(i))
				h := repo.Handle{Type: repo.PackFile, Name: hashName(data)}
				if err := saveBytes(ctx, be, h, data); err != nil {
					errs <- err
					return
				}
				mu.Lock()
				want[h.Name] = int64(len(data))
				mu.Unlock()
			}
		})
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got := map[string]int64{}
	err := be.List(ctx, repo.PackFile, func(fi repo.FileInfo) error {
		if _, dup := got[fi.Name]; dup {
			return fmt.Errorf("%s listed twice", fi.Name)
		}
		got[fi.Name] = fi.Size
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("listed %d files, want %d", len(got), n)
	}
	for name, size := range want {
		if got[name] != size {
			t.Fatalf("%s: listed size %d, want %d", name, got[name], size)
		}
	}
}

// TestMultipart: files larger than a part go up in parts, and a failed
// multipart upload leaves neither an object nor an unfinished upload.
func TestMultipart(t *testing.T) {
	srv := testenv.MinIO(t)
	ctx := context.Background()
	be := created(t, srv, "")
	s3.SetPartSize(be, 5<<20)
	data := make([]byte, 12<<20+5)
	rand.New(rand.NewSource(1)).Read(data)
	h := repo.Handle{Type: repo.PackFile, Name: hashName(data)}
	if err := saveBytes(ctx, be, h, data); err != nil {
		t.Fatal(err)
	}
	got, err := repo.ReadAll(ctx, be, h)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("load: %d bytes, %v", len(got), err)
	}

	h2 := repo.Handle{Type: repo.PackFile, Name: hashName(data[1:])}
	err = be.Save(ctx, h2, &failAfter{data: data, n: 7 << 20}, int64(len(data)))
	if err == nil {
		t.Fatal("save from a source failing after 7 MiB succeeded")
	}
	if _, err := be.Stat(ctx, h2); !errors.Is(err, repo.ErrNotFound) {
		t.Errorf("stat after a failed multipart save: %v, want ErrNotFound", err)
	}
	bucket := strings.TrimPrefix(be.Location(), "s3:http://"+srv.Endpoint+"/")
	for up := range rawClient(t, srv).ListIncompleteUploads(ctx, bucket, "", true) {
		if up.Err != nil {
			t.Fatal(up.Err)
		}
		t.Errorf("unfinished upload left behind: %s", up.Key)
	}
}

type failAfter struct {
	data []byte
	n    int64
}

func (r *failAfter) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > r.n {
		return 0, errors.New("source read failed")
	}
	return copy(p, r.data[off:]), nil
}

// TestServerRestart: with the retry wrapper, a save started while the
// server is down completes once it is back.
func TestServerRestart(t *testing.T) {
	srv := testenv.MinIO(t)
	ctx := context.Background()
	raw := created(t, srv, "")
	failures := make(chan error, 100)
	be := retry.New(raw, retry.Options{
		MaxElapsed: 2 * time.Minute, InitialDelay: 50 * time.Millisecond, MaxDelay: 500 * time.Millisecond,
		Notify: func(_ string, err error, _ time.Duration) {
			select {
			case failures <- err:
			default:
			}
		},
	})
	before := []byte("saved before the restart")
	hb := repo.Handle{Type: repo.SnapshotFile, Name: hashName(before)}
	if err := saveBytes(ctx, be, hb, before); err != nil {
		t.Fatal(err)
	}

	srv.Stop()
	data := make([]byte, 1<<20)
	rand.New(rand.NewSource(2)).Read(data)
	h := repo.Handle{Type: repo.PackFile, Name: hashName(data)}
	saved := make(chan error, 1)
	go func() { saved <- saveBytes(ctx, be, h, data) }()
	loaded := make(chan error, 1)
	go func() {
		got, err := repo.ReadAll(ctx, be, hb)
		if err == nil && !bytes.Equal(got, before) {
			err = errors.New("loaded content differs")
		}
		loaded <- err
	}()
	// Wait for the server's absence to have been noticed, then bring it back.
	for range 2 {
		if err := <-failures; !retry.IsTransient(err) {
			t.Errorf("failure while the server is down is not transient: %v", err)
		}
	}
	srv.Start()
	if err := <-saved; err != nil {
		t.Fatalf("save across the restart: %v", err)
	}
	if err := <-loaded; err != nil {
		t.Fatalf("load across the restart: %v", err)
	}
	got, err := repo.ReadAll(ctx, raw, h)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("file saved across the restart: %d bytes, %v", len(got), err)
	}
}

// faultProxy stands between the client and MinIO and spoils the first
// requests the way busy or flaky servers do.
type faultProxy struct {
	proxy  *httputil.ReverseProxy
	target *url.URL
	mu     sync.Mutex
	raw    *minio.Client // for "norange"
	faults []string      // what to do with the next requests: "503", "429", "500", "cut", "norange"
	served []string
}

func (p *faultProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	fault := ""
	if len(p.faults) > 0 {
		fault, p.faults = p.faults[0], p.faults[1:]
		p.served = append(p.served, r.Method+" "+fault)
	}
	p.mu.Unlock()
	errXML := func(status int, code string) {
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(status)
		fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>injected</Message></Error>`, code)
	}
	switch fault {
	case "503":
		errXML(http.StatusServiceUnavailable, "SlowDown")
	case "429":
		errXML(http.StatusTooManyRequests, "TooManyRequests")
	case "500":
		errXML(http.StatusInternalServerError, "InternalError")
	case "norange":
		// Answer a GET with the whole object, as servers that ignore
		// Range do.
		bucket, key, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		obj, err := p.raw.GetObject(r.Context(), bucket, key, minio.GetObjectOptions{})
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer obj.Close()
		info, err := obj.Stat()
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(info.Size))
		w.Header().Set("Last-Modified", info.LastModified.UTC().Format(http.TimeFormat))
		w.Header().Set("ETag", `"`+info.ETag+`"`)
		w.WriteHeader(http.StatusOK)
		io.Copy(w, obj)
	case "cut":
		// Pass the answer on, but break the connection halfway through
		// the body.
		req := r.Clone(r.Context())
		req.URL.Scheme, req.URL.Host, req.RequestURI = p.target.Scheme, p.target.Host, ""
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		io.CopyN(w, resp.Body, resp.ContentLength/2)
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	default:
		p.proxy.ServeHTTP(w, r)
	}
}

// behindProxy returns a backend on a new bucket of srv, reached through a
// faultProxy, and wrapped in the retry package.
func behindProxy(t *testing.T, srv *testenv.S3Server) (repo.Backend, *faultProxy) {
	t.Helper()
	target, err := url.Parse("http://" + srv.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	fp := &faultProxy{proxy: httputil.NewSingleHostReverseProxy(target), target: target, raw: rawClient(t, srv)}
	ps := httptest.NewServer(fp)
	t.Cleanup(ps.Close)
	cfg := config(t, srv, newBucketName(), "")
	cfg.Endpoint = strings.TrimPrefix(ps.URL, "http://")
	raw := open(t, cfg)
	if err := raw.Create(context.Background()); err != nil {
		t.Fatal(err)
	}
	return retry.New(raw, retry.Options{MaxElapsed: time.Minute, InitialDelay: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond}), fp
}

func (p *faultProxy) inject(faults ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = append(p.faults, faults...)
}

// TestTransientServerErrors: throttling, server errors and a broken
// download are retried; a broken download starts over.
func TestTransientServerErrors(t *testing.T) {
	srv := testenv.MinIO(t)
	ctx := context.Background()
	be, fp := behindProxy(t, srv)

	data := make([]byte, 256<<10)
	rand.New(rand.NewSource(3)).Read(data)
	h := repo.Handle{Type: repo.PackFile, Name: hashName(data)}
	fp.inject("503", "429", "500")
	if err := saveBytes(ctx, be, h, data); err != nil {
		t.Fatalf("save through throttling: %v", err)
	}
	fp.inject("cut", "503", "cut")
	got, err := repo.ReadAt(ctx, be, h, 1000, 200<<10, nil)
	if err != nil || !bytes.Equal(got, data[1000:1000+200<<10]) {
		t.Fatalf("ranged load through cut downloads: %d bytes, %v (equal: %v)", len(got), err, bytes.Equal(got, data[1000:1000+200<<10]))
	}
	fp.mu.Lock()
	defer fp.mu.Unlock()
	if len(fp.faults) != 0 || len(fp.served) != 6 {
		t.Errorf("faults served: %v, left: %v", fp.served, fp.faults)
	}
}

func TestParseURL(t *testing.T) {
	good := []struct {
		in    string
		https bool
		host  string
		bkt   string
		pfx   string
		loc   string
	}{
		{"s3:http://127.0.0.1:9000/bucket", false, "127.0.0.1:9000", "bucket", "", "s3:http://127.0.0.1:9000/bucket"},
		{"s3:https://s3.example.com/my-bucket/", true, "s3.example.com", "my-bucket", "", "s3:https://s3.example.com/my-bucket"},
		{"s3:https://s3.example.com/b01/a/b/c", true, "s3.example.com", "b01", "a/b/c", "s3:https://s3.example.com/b01/a/b/c"},
		{"s3:http://[::1]:9000/bkt/p/", false, "[::1]:9000", "bkt", "p", "s3:http://[::1]:9000/bkt/p"},
	}
	for _, c := range good {
		cfg, err := s3.ParseURL(c.in)
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		if cfg.HTTPS != c.https || cfg.Endpoint != c.host || cfg.Bucket != c.bkt || cfg.Prefix != c.pfx || cfg.Location() != c.loc {
			t.Errorf("%s: %+v (location %s)", c.in, cfg, cfg.Location())
		}
	}
	bad := []struct{ in, mention string }{
		{"/srv/repo", "not an s3: URL"},
		{"s3:127.0.0.1:9000/bucket", "s3:http://HOST"},
		{"s3:s3.amazonaws.com/bucket", "no scheme"},
		{"s3:ftp://host/bucket", `scheme "ftp"`},
		{"s3:http:///bucket", "no host"},
		{"s3:http://host:9000", "no bucket"},
		{"s3:http://host:9000/", "no bucket"},
		{"s3:http://host/Bad_Bucket", "invalid bucket name"},
		{"s3:http://host/bucket/a//b", "invalid prefix"},
		{"s3:http://host/bucket/a/../b", "invalid prefix"},
		{"s3:http://host/bucket?versionId=1", "query"},
		{"s3:http://AKIA:topsecret@host/bucket", "credentials in the URL"},
		{"s3:AKIA:topsecret@host/bucket", "s3:http://HOST"},
		{"s3:http://AKIA:topsecret@host:port/bucket", "s3:http://HOST"},
		{"s3:http://h/bucket/%zz:topsecret", "s3:http://HOST"},
	}
	for _, c := range bad {
		_, err := s3.ParseURL(c.in)
		if err == nil {
			t.Errorf("%s: accepted", c.in)
			continue
		}
		if !strings.Contains(err.Error(), c.mention) {
			t.Errorf("%s: error %q does not mention %q", c.in, err, c.mention)
		}
		if strings.Contains(err.Error(), "topsecret") {
			t.Errorf("%s: error shows the password: %v", c.in, err)
		}
	}
}

func TestFromEnvAndOpen(t *testing.T) {
	cfg, err := s3.ParseURL("s3:http://127.0.0.1:9/bucket/prefix")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s3.Open(cfg); err == nil || !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") {
		t.Errorf("open without credentials: %v, want an error naming AWS_ACCESS_KEY_ID", err)
	}
	env := map[string]string{
		"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
		"AWS_SESSION_TOKEN": "tok", "AWS_DEFAULT_REGION": "eu-west-3",
	}
	cfg.FromEnv(func(k string) string { return env[k] })
	if cfg.AccessKeyID != "AKIDEXAMPLE" || cfg.SecretAccessKey != "s3cr3t-value" || cfg.SessionToken != "tok" || cfg.Region != "eu-west-3" {
		t.Errorf("from the environment: %+v", cfg)
	}
	be, err := s3.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	if loc := be.Location(); loc != "s3:http://127.0.0.1:9/bucket/prefix" || strings.Contains(loc, "s3cr3t") || strings.Contains(loc, "AKID") {
		t.Errorf("Location = %q", loc)
	}
	// AWS_REGION is the other common name; AWS_DEFAULT_REGION wins.
	var c2 s3.Config
	c2.FromEnv(func(k string) string { return map[string]string{"AWS_REGION": "ap-south-1"}[k] })
	if c2.Region != "ap-south-1" {
		t.Errorf("AWS_REGION: region %q", c2.Region)
	}
}

// TestServerIgnoringRange: a server that answers a ranged GET with the
// whole object still yields exactly the range, or an error past the end.
func TestServerIgnoringRange(t *testing.T) {
	srv := testenv.MinIO(t)
	ctx := context.Background()
	be, fp := behindProxy(t, srv)
	data := make([]byte, 100000)
	rand.New(rand.NewSource(4)).Read(data)
	h := repo.Handle{Type: repo.PackFile, Name: hashName(data)}
	if err := saveBytes(ctx, be, h, data); err != nil {
		t.Fatal(err)
	}
	fp.inject("norange", "norange", "norange", "norange")
	got, err := repo.ReadAt(ctx, be, h, 1000, 5000, nil)
	if err != nil || !bytes.Equal(got, data[1000:6000]) {
		t.Errorf("ranged load: %d bytes, %v (equal: %v)", len(got), err, bytes.Equal(got, data[1000:6000]))
	}
	var tail []byte
	err = be.Load(ctx, h, 99000, 0, func(r io.Reader) error {
		var err error
		tail, err = io.ReadAll(r)
		return err
	})
	if err != nil || !bytes.Equal(tail, data[99000:]) {
		t.Errorf("load from an offset to the end: %d bytes, %v", len(tail), err)
	}
	if _, err := repo.ReadAt(ctx, be, h, 99990, 20, nil); err == nil {
		t.Error("range past the end: no error")
	}
	if err := be.Load(ctx, h, 100001, 0, func(io.Reader) error { return nil }); err == nil {
		t.Error("offset past the end: no error")
	}
	fp.mu.Lock()
	defer fp.mu.Unlock()
	if len(fp.faults) != 0 || len(fp.served) != 4 {
		t.Errorf("faults served: %v, left: %v (a permanent error was retried?)", fp.served, fp.faults)
	}
}

// TestLoadAtTheEnd: reading from the end offset gives nothing, as a local
// file does, although S3 calls that range unsatisfiable.
func TestLoadAtTheEnd(t *testing.T) {
	srv := testenv.MinIO(t)
	ctx := context.Background()
	be := created(t, srv, "")
	data := []byte("0123456789")
	h := repo.Handle{Type: repo.IndexFile, Name: hashName(data)}
	if err := saveBytes(ctx, be, h, data); err != nil {
		t.Fatal(err)
	}
	called := false
	err := be.Load(ctx, h, int64(len(data)), 0, func(r io.Reader) error {
		called = true
		got, err := io.ReadAll(r)
		if len(got) != 0 {
			t.Errorf("read %q at the end", got)
		}
		return err
	})
	if err != nil || !called {
		t.Errorf("load at the end: %v (callback called: %v)", err, called)
	}
	if err := be.Load(ctx, h, int64(len(data))+1, 0, func(io.Reader) error { return nil }); err == nil {
		t.Error("load past the end: no error")
	}
}
