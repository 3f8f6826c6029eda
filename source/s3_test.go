package source_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"math/rand"
	"slices"
	"strings"
	"testing"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/mem"
	"github.com/cairn-backup/cairn/snapshot"
	"github.com/cairn-backup/cairn/source"
	"github.com/cairn-backup/cairn/tests/testenv"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

type s3Fixture struct {
	srv    *testenv.S3Server
	client *minio.Client
}

func newS3Fixture(t *testing.T) *s3Fixture {
	t.Helper()
	srv := testenv.MinIO(t)
	client, err := minio.New(srv.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""), Region: srv.Region})
	if err != nil {
		t.Fatal(err)
	}
	return &s3Fixture{srv: srv, client: client}
}

func (f *s3Fixture) spec(bucket, prefix string) source.Spec {
	return source.Spec{Kind: "s3", Name: "objects", Endpoint: "http://" + f.srv.Endpoint, Bucket: bucket, Prefix: prefix,
		AccessKey: f.srv.AccessKey, SecretKey: f.srv.SecretKey}
}

func (f *s3Fixture) makeBucket(t *testing.T, name string) {
	t.Helper()
	if err := f.client.MakeBucket(t.Context(), name, minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (f *s3Fixture) put(t *testing.T, bucket, key string, data []byte, contentType string, meta map[string]string) {
	t.Helper()
	_, err := f.client.PutObject(t.Context(), bucket, key, bytes.NewReader(data), int64(len(data)),
		minio.PutObjectOptions{ContentType: contentType, UserMetadata: meta})
	if err != nil {
		t.Fatal(err)
	}
}

// stored is an object as a client sees it: its content and what a HEAD
// request tells.
type stored struct {
	data        []byte
	contentType string
	meta        map[string]string // lower-case names
}

// objects reads every object of bucket.
func (f *s3Fixture) objects(t *testing.T, bucket string) map[string]stored {
	t.Helper()
	out := map[string]stored{}
	for o := range f.client.ListObjects(t.Context(), bucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		obj, err := f.client.GetObject(t.Context(), bucket, o.Key, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(obj)
		if err != nil {
			t.Fatal(err)
		}
		info, err := obj.Stat()
		if err != nil {
			t.Fatal(err)
		}
		obj.Close()
		s := stored{data: data, contentType: info.ContentType, meta: map[string]string{}}
		for k, v := range info.UserMetadata {
			s.meta[strings.ToLower(k)] = v
		}
		out[o.Key] = s
	}
	return out
}

func memStore(t *testing.T) *pack.Store {
	t.Helper()
	ctx := context.Background()
	r, err := repo.Init(ctx, mem.New(), []byte("pw"), repo.InitOptions{KDF: crypto.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	idx, err := index.Load(ctx, r, index.Options{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idx.Close() })
	return pack.NewStore(r, idx)
}

func TestBucketListAndOpen(t *testing.T) {
	f := newS3Fixture(t)
	f.makeBucket(t, "src")
	f.put(t, "src", "app/b.json", []byte(`{"b":1}`), "application/json", map[string]string{"Owner": "alice", "Build-Id": "42"})
	f.put(t, "src", "app/a.txt", []byte("alpha"), "text/plain", nil)
	f.put(t, "src", "app-other/x", []byte("outside the prefix"), "", nil)
	f.put(t, "src", "zzz", []byte("outside too"), "", nil)

	b, err := source.OpenBucket(f.spec("src", "app/"))
	if err != nil {
		t.Fatal(err)
	}
	var listed []snapshot.Object
	if err := b.List(t.Context(), func(o snapshot.Object) error { listed = append(listed, o); return nil }); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, o := range listed {
		keys = append(keys, o.Key)
	}
	if want := []string{"app/a.txt", "app/b.json"}; !slices.Equal(keys, want) {
		t.Fatalf("listed %v, want %v", keys, want)
	}

	rc, o, err := b.Open(t.Context(), "app/b.json")
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != `{"b":1}` || o.Size != 7 || o.ETag != listed[1].ETag || o.ContentType != "application/json" ||
		!maps.Equal(o.Metadata, map[string]string{"owner": "alice", "build-id": "42"}) {
		t.Errorf("opened %q as %+v; listed as %+v", data, o, listed[1])
	}
	if o.ETag == "" || strings.Contains(o.ETag, `"`) {
		t.Errorf("ETag %q: want it without quotes", o.ETag)
	}

	// Stopping the listing early is no error and leaks nothing.
	n := 0
	stop := fmt.Errorf("enough")
	if err := b.List(t.Context(), func(snapshot.Object) error { n++; return stop }); err != stop || n != 1 {
		t.Errorf("stopped listing: %v after %d objects", err, n)
	}

	if _, _, err := b.Open(t.Context(), "app/missing"); err == nil || !strings.Contains(err.Error(), "app/missing") {
		t.Errorf("open of a missing object: %v", err)
	}
	missing, err := source.OpenBucket(f.spec("no-such-bucket", ""))
	if err != nil {
		t.Fatal(err)
	}
	if err := missing.List(t.Context(), func(snapshot.Object) error { return nil }); err == nil || !strings.Contains(err.Error(), "no-such-bucket") {
		t.Errorf("listing a missing bucket: %v", err)
	}
	wrong := f.spec("src", "")
	wrong.SecretKey = "not-the-secret"
	wb, err := source.OpenBucket(wrong)
	if err != nil {
		t.Fatal(err)
	}
	if err := wb.List(t.Context(), func(snapshot.Object) error { return nil }); err == nil {
		t.Error("listing with a wrong secret key succeeded")
	}
}

func TestOpenBucketEndpoints(t *testing.T) {
	for _, ep := range []string{"10.0.0.5:9000", "ftp://host", "http://", "http://host/path", "http://user:pw@host", "http://host?x=1"} {
		if _, err := source.OpenBucket(source.Spec{Name: "objects", Bucket: "b", Endpoint: ep}); err == nil {
			t.Errorf("endpoint %q accepted", ep)
		}
	}
	for _, ep := range []string{"", "http://127.0.0.1:9000", "https://s3.example.com/", "http://[::1]:9000"} {
		if _, err := source.OpenBucket(source.Spec{Name: "objects", Bucket: "b", Endpoint: ep}); err != nil {
			t.Errorf("endpoint %q: %v", ep, err)
		}
	}
	if _, err := source.OpenBucket(source.Spec{Name: "objects"}); err == nil {
		t.Error("a spec without a bucket was accepted")
	}
}

// TestBucketRoundTrip backs a bucket up, then restores the snapshot into a
// new bucket: the same objects, content and metadata.
func TestBucketRoundTrip(t *testing.T) {
	f := newS3Fixture(t)
	f.makeBucket(t, "src")
	rnd := rand.New(rand.NewSource(1))
	for i := range 12 {
		data := make([]byte, rnd.Intn(3000))
		if i == 5 {
			data = make([]byte, 20<<20) // uploaded in parts
		}
		rnd.Read(data)
		meta := map[string]string{"seq": fmt.Sprint(i)}
		if i%2 == 0 {
			meta["X-Amz-Meta-Cache-Control"] = "kept as metadata" // a header name, as a metadata name
		}
		f.put(t, "src", fmt.Sprintf("dir%d/obj%d", i%3, i), data, "application/x-test", meta)
	}
	f.put(t, "src", "folder/", nil, "application/x-directory", nil)
	f.put(t, "src", "100%/a b", []byte("escaped in the snapshot"), "text/plain", nil)
	want := f.objects(t, "src")

	store := memStore(t)
	b, err := source.OpenBucket(f.spec("src", ""))
	if err != nil {
		t.Fatal(err)
	}
	sn, err := snapshot.BackupObjects(t.Context(), store, snapshot.BackupOptions{}, b)
	if err != nil {
		t.Fatal(err)
	}
	if sn.Summary.FilesNew != len(want) {
		t.Errorf("%d new files, want %d", sn.Summary.FilesNew, len(want))
	}
	walk := func(put func(snapshot.Object, io.Reader) error) error {
		return snapshot.WalkObjects(t.Context(), store, sn.Tree, put)
	}

	if err := source.PutObjects(t.Context(), f.spec("restored", ""), false, walk); err != nil {
		t.Fatal(err)
	}
	got := f.objects(t, "restored")
	if !slices.Equal(slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want))) {
		t.Fatalf("restored keys %v, want %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
	}
	for key, w := range want {
		g := got[key]
		if !bytes.Equal(g.data, w.data) || g.contentType != w.contentType || !maps.Equal(g.meta, w.meta) {
			t.Errorf("%s: restored %d bytes, %s, %v; want %d bytes, %s, %v",
				key, len(g.data), g.contentType, g.meta, len(w.data), w.contentType, w.meta)
		}
	}

	// A bucket that holds objects is refused, and left as it was.
	f.makeBucket(t, "busy")
	f.put(t, "busy", "keep/me", []byte("mine"), "", nil)
	err = source.PutObjects(t.Context(), f.spec("busy", ""), false, walk)
	if err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("restore into a bucket with objects: %v", err)
	}
	if n := len(f.objects(t, "busy")); n != 1 {
		t.Errorf("the refused restore left %d objects, want the 1 that was there", n)
	}
	// Objects under another prefix do not count.
	if err := source.PutObjects(t.Context(), f.spec("busy", "dir"), false, walk); err != nil {
		t.Errorf("restore under an empty prefix of a bucket: %v", err)
	}
	// Overwrite replaces objects of the same keys and keeps the others.
	f.put(t, "restored", "dir0/obj0", []byte("changed"), "", nil)
	if err := source.PutObjects(t.Context(), f.spec("restored", ""), true, walk); err != nil {
		t.Fatal(err)
	}
	if g := f.objects(t, "restored")["dir0/obj0"]; !bytes.Equal(g.data, want["dir0/obj0"].data) {
		t.Errorf("overwrite left %q", g.data)
	}
}
