package tests

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
	"github.com/cairn-backup/cairn/source"
	"github.com/cairn-backup/cairn/tests/testenv"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// The tests in this file cover s3 components (cluster.md): a bucket on a
// MinIO server of the test's own is the source; the repository is the
// harness's, local or on the shared server.

// s3Source is the MinIO server a component reads from.
type s3Source struct {
	srv    *testenv.S3Server
	client *minio.Client
}

func newS3Source(t *testing.T) *s3Source {
	t.Helper()
	srv := testenv.MinIO(t)
	client, err := minio.New(srv.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""), Region: srv.Region})
	if err != nil {
		t.Fatal(err)
	}
	return &s3Source{srv: srv, client: client}
}

func (s *s3Source) put(t *testing.T, bucket, key string, data []byte, meta map[string]string) {
	t.Helper()
	_, err := s.client.PutObject(t.Context(), bucket, key, bytes.NewReader(data), int64(len(data)),
		minio.PutObjectOptions{ContentType: "application/x-" + strings.ReplaceAll(filepath.Ext(key), ".", ""), UserMetadata: meta})
	if err != nil {
		t.Fatal(err)
	}
}

// s3Object is an object as a client reads it.
type s3Object struct {
	data        []byte
	contentType string
	meta        map[string]string
}

func (s *s3Source) objects(t *testing.T, bucket string) map[string]s3Object {
	t.Helper()
	out := map[string]s3Object{}
	for o := range s.client.ListObjects(t.Context(), bucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		obj, err := s.client.GetObject(t.Context(), bucket, o.Key, minio.GetObjectOptions{})
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
		meta := map[string]string{}
		for k, v := range info.UserMetadata {
			meta[strings.ToLower(k)] = v
		}
		out[o.Key] = s3Object{data: data, contentType: info.ContentType, meta: meta}
	}
	return out
}

// s3SnapshotSummary returns the summary of snapshot id, from `snapshots --json`.
func s3SnapshotSummary(t *testing.T, e *Env, id string) map[string]any {
	t.Helper()
	for _, sn := range e.Snapshots() {
		if sn["id"] == id {
			sum, _ := sn["summary"].(map[string]any)
			if sum == nil {
				t.Fatalf("snapshot %s has no summary: %v", id, sn)
			}
			return sum
		}
	}
	t.Fatalf("no snapshot %s", id)
	return nil
}

// s3Backup runs the cluster backup and returns the snapshot id of
// component objects.
func s3Backup(t *testing.T, e *Env, config string) string {
	t.Helper()
	e.Must("backup", "--config", config, "--node", "node1", "--json")
	st := e.status("latest")
	c := st.Components[st.component(t, "objects")]
	if st.Phase != "completed" || c.Phase != "completed" || c.SnapshotID == nil || c.Kind != "s3" {
		t.Fatalf("run %s: %+v", st.Phase, c)
	}
	return *c.SnapshotID
}

func TestClusterS3(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := newS3Source(t)
	if err := src.client.MakeBucket(t.Context(), "pach-data", minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		size := 200 + i*97
		if i%7 == 3 {
			size = 2<<20 + i*1000 // several chunks
		}
		key := fmt.Sprintf("commits/%02d/part-%02d.dat", i%4, i)
		src.put(t, "pach-data", key, randomBytes(uint64(i), size), map[string]string{"commit": fmt.Sprint(i)})
	}
	// Credentials under names of the component's own: the repository may
	// use AWS_* for another server.
	e.Extra = append(e.Extra, "SRC_ACCESS_KEY="+src.srv.AccessKey, "SRC_SECRET_KEY="+src.srv.SecretKey)
	config := writeConfig(t, e, fmt.Sprintf(`cluster: prod
components:
  - name: objects
    kind: s3
    endpoint: http://%s
    bucket: pach-data
    access_key_env: SRC_ACCESS_KEY
    secret_key_env: SRC_SECRET_KEY
`, src.srv.Endpoint))

	first := s3Backup(t, e, config)
	wantCounts(t, "first backup", s3SnapshotSummary(t, e, first), map[string]int64{
		"files_new": 20, "files_changed": 0, "files_unmodified": 0, "errors": 0})

	// Restored to a directory, the objects are files at their keys.
	want := src.objects(t, "pach-data")
	target := filepath.Join(e.Dir, "restored")
	e.Must("restore", first, "--target", target)
	got := map[string][]byte{}
	err := filepath.WalkDir(target, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(target, p)
		data, err := os.ReadFile(p)
		got[filepath.ToSlash(rel)] = data
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want))) {
		t.Fatalf("restored files %v, want the keys %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
	}
	for key, o := range want {
		if !bytes.Equal(got[key], o.data) {
			t.Errorf("restored %s: %d bytes differ from the object's %d", key, len(got[key]), len(o.data))
		}
	}

	// One object of 20 changes and one is added: only those two are read.
	changed, added := "commits/03/part-03.dat", "commits/new/part-20.dat"
	src.put(t, "pach-data", changed, randomBytes(1000, len(want[changed].data)), map[string]string{"commit": "3b"})
	src.put(t, "pach-data", added, []byte("a new object"), map[string]string{"commit": "20"})
	second := s3Backup(t, e, config)
	sum := s3SnapshotSummary(t, e, second)
	wantCounts(t, "second backup", sum, map[string]int64{
		"files_new": 1, "files_changed": 1, "files_unmodified": 19, "errors": 0})
	// What was stored is about the changed object: the other large
	// objects were neither read nor stored again.
	if added := intField(t, sum, "data_added"); added > int64(len(want[changed].data))+1<<20 {
		t.Errorf("the second backup added %d bytes for a %d-byte change", added, len(want[changed].data))
	}

	// The second snapshot, put into a new bucket, gives the source's
	// objects: content, content type and metadata.
	want = src.objects(t, "pach-data")
	store := s3OpenStore(t, e)
	sn, err := snapshot.Load(t.Context(), store.Repo(), s3ParseID(t, second))
	if err != nil {
		t.Fatal(err)
	}
	target2 := source.Spec{Kind: "s3", Name: "objects", Endpoint: "http://" + src.srv.Endpoint, Bucket: "restored",
		AccessKey: src.srv.AccessKey, SecretKey: src.srv.SecretKey}
	err = source.PutObjects(t.Context(), target2, false, func(put func(snapshot.Object, io.Reader) error) error {
		return snapshot.WalkObjects(t.Context(), store, sn.Tree, put)
	})
	if err != nil {
		t.Fatal(err)
	}
	restored := src.objects(t, "restored")
	if len(restored) != 21 || len(restored) != len(want) {
		t.Errorf("%d objects restored, want 21 (the source has %d)", len(restored), len(want))
	}
	for key, w := range want {
		g, ok := restored[key]
		if !ok || !bytes.Equal(g.data, w.data) || g.contentType != w.contentType || !maps.Equal(g.meta, w.meta) {
			t.Errorf("restored %s: %d bytes, %q, %v; want %d bytes, %q, %v",
				key, len(g.data), g.contentType, g.meta, len(w.data), w.contentType, w.meta)
		}
	}
}

// TestClusterS3MissingBucket: a bucket that is not there fails the
// component, with its name in the error, and nothing else.
func TestClusterS3MissingBucket(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := newS3Source(t)
	e.Extra = append(e.Extra, "SRC_ACCESS_KEY="+src.srv.AccessKey, "SRC_SECRET_KEY="+src.srv.SecretKey)
	config := writeConfig(t, e, fmt.Sprintf(`cluster: prod
components:
  - name: objects
    kind: s3
    endpoint: http://%s
    bucket: no-such-bucket
    access_key_env: SRC_ACCESS_KEY
    secret_key_env: SRC_SECRET_KEY
  - name: notes
    kind: command
    backup: ["echo", "still backed up"]
`, src.srv.Endpoint))
	r := e.Run("backup", "--config", config, "--node", "node1")
	if r.Code == 0 || !strings.Contains(r.Stderr, "no-such-bucket") {
		t.Fatalf("backup of a missing bucket:\n%s", r)
	}
	st := e.status("latest")
	if c := st.Components[st.component(t, "objects")]; c.Phase != "failed" || c.Error == nil || !strings.Contains(*c.Error, "no-such-bucket") {
		t.Errorf("component objects: %s, error %v", c.Phase, c.Error)
	}
	if c := st.Components[st.component(t, "notes")]; c.Phase != "completed" {
		t.Errorf("component notes: %s, want completed", c.Phase)
	}
}

func s3OpenStore(t *testing.T, e *Env) *pack.Store {
	t.Helper()
	r := e.OpenRepo()
	idx, err := index.Load(context.Background(), r, index.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idx.Close() })
	return pack.NewStore(r, idx)
}

func s3ParseID(t *testing.T, s string) repo.ID {
	t.Helper()
	id, err := repo.ParseID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
