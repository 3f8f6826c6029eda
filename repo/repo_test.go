package repo_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math/rand"
	"strings"
	"testing"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/mem"
	"github.com/restic/chunker"
)

// testKDF keeps argon2id cheap: these tests check behaviour, not cost.
var testKDF = crypto.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

func initRepo(t testing.TB, be repo.Backend, password string) *repo.Repo {
	t.Helper()
	r, err := repo.Init(context.Background(), be, []byte(password), repo.InitOptions{KDF: testKDF})
	if err != nil {
		t.Fatalf("init: %v", err)
	}
	return r
}

func random(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

func saveRaw(t testing.TB, be repo.Backend, h repo.Handle, data []byte) {
	t.Helper()
	if err := be.Save(context.Background(), h, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
}

func loadRaw(t testing.TB, be repo.Backend, h repo.Handle) []byte {
	t.Helper()
	data, err := repo.ReadAll(context.Background(), be, h)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestInitOpen(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	r := initRepo(t, be, "secret")
	cfg := r.Config()
	if cfg.Version != repo.FormatVersion || cfg.ID.IsNull() || cfg.Compression != repo.CompressAuto {
		t.Fatalf("config after init: %+v", cfg)
	}
	if !cfg.Polynomial.Irreducible() {
		t.Fatalf("random polynomial %s is not irreducible", cfg.Polynomial)
	}
	if cfg.ChunkMin == 0 || cfg.ChunkMin > cfg.ChunkMax || cfg.PackSize <= 0 {
		t.Fatalf("implausible chunk or pack sizes: %+v", cfg)
	}

	r2, err := repo.Open(ctx, be, []byte("secret"))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if r2.Config() != cfg {
		t.Fatalf("opened config %+v, want %+v", r2.Config(), cfg)
	}
	if r2.KeyID() != r.KeyID() || !bytes.Equal(r2.Key().Bytes(), r.Key().Bytes()) {
		t.Fatal("open found another master key")
	}

	// The config is sealed: its fields are not readable in the stored bytes.
	raw := loadRaw(t, be, repo.Handle{Type: repo.ConfigFile})
	if bytes.Contains(raw, []byte("chunker_polynomial")) || bytes.Contains(raw, []byte(cfg.ID.String())) {
		t.Fatal("config is stored in the clear")
	}
}

func TestInitOptions(t *testing.T) {
	pol := chunker.Pol(0x3DA3358B4DC173)
	r, err := repo.Init(context.Background(), mem.New(), []byte("pw"),
		repo.InitOptions{KDF: testKDF, Polynomial: pol, Compression: repo.CompressMax})
	if err != nil {
		t.Fatal(err)
	}
	if r.Config().Polynomial != pol || r.Config().Compression != repo.CompressMax {
		t.Fatalf("options ignored: %+v", r.Config())
	}
	// x^2 = x·x is reducible: chunk boundaries would be weak.
	_, err = repo.Init(context.Background(), mem.New(), []byte("pw"), repo.InitOptions{KDF: testKDF, Polynomial: 4})
	if err == nil {
		t.Fatal("init accepted a reducible polynomial")
	}
}

func TestInitTwice(t *testing.T) {
	be := mem.New()
	initRepo(t, be, "pw")
	_, err := repo.Init(context.Background(), be, []byte("other"), repo.InitOptions{KDF: testKDF})
	if !errors.Is(err, repo.ErrRepositoryExists) {
		t.Fatalf("second init: %v, want ErrRepositoryExists", err)
	}
	// The first repository is intact.
	if _, err := repo.Open(context.Background(), be, []byte("pw")); err != nil {
		t.Fatalf("open after refused init: %v", err)
	}
	if _, err := repo.Open(context.Background(), be, []byte("other")); !errors.Is(err, repo.ErrWrongPassword) {
		t.Fatalf("refused init left a key: %v", err)
	}
}

func TestInitAfterInterruptedInit(t *testing.T) {
	be := mem.New()
	initRepo(t, be, "pw")
	if err := be.Remove(context.Background(), repo.Handle{Type: repo.ConfigFile}); err != nil {
		t.Fatal(err)
	}
	_, err := repo.Init(context.Background(), be, []byte("pw"), repo.InitOptions{KDF: testKDF})
	if !errors.Is(err, repo.ErrRepositoryExists) {
		t.Fatalf("init over key files without a config: %v, want ErrRepositoryExists", err)
	}
}

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := repo.Open(ctx, mem.New(), []byte("pw")); !errors.Is(err, repo.ErrNoRepository) {
		t.Fatalf("open of an empty backend: %v, want ErrNoRepository", err)
	}
	be := mem.New()
	initRepo(t, be, "pw")
	for _, pw := range []string{"", "Pw", "pw ", "pw\x00"} {
		if _, err := repo.Open(ctx, be, []byte(pw)); !errors.Is(err, repo.ErrWrongPassword) {
			t.Errorf("open with %q: %v, want ErrWrongPassword", pw, err)
		}
	}
}

func TestOpenRefusesUnknownVersion(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	r := initRepo(t, be, "pw")
	cfg := r.Config()
	cfg.Version = repo.FormatVersion + 1
	plain, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sealed := r.Key().Seal(nil, repo.Encode(nil, plain, repo.CompressOff), []byte("config"))
	saveRaw(t, be, repo.Handle{Type: repo.ConfigFile}, sealed)
	if _, err := repo.Open(ctx, be, []byte("pw")); err == nil || !strings.Contains(err.Error(), "version") {
		t.Fatalf("open of a version %d repository: %v, want a version error", cfg.Version, err)
	}
}

func TestOpenDamagedConfig(t *testing.T) {
	be := mem.New()
	initRepo(t, be, "pw")
	h := repo.Handle{Type: repo.ConfigFile}
	raw := loadRaw(t, be, h)
	raw[len(raw)/2] ^= 1
	saveRaw(t, be, h, raw)
	if _, err := repo.Open(context.Background(), be, []byte("pw")); !errors.Is(err, crypto.ErrAuth) {
		t.Fatalf("open with a damaged config: %v, want ErrAuth", err)
	}
}

func countKeys(t *testing.T, be repo.Backend) int {
	t.Helper()
	n := 0
	if err := be.List(context.Background(), repo.KeyFile, func(repo.FileInfo) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestAddRemoveKey(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	r := initRepo(t, be, "first")
	first := r.KeyID()
	second, err := r.AddKey(ctx, []byte("second"), testKDF)
	if err != nil {
		t.Fatal(err)
	}
	if countKeys(t, be) != 2 {
		t.Fatalf("%d key files, want 2", countKeys(t, be))
	}
	for pw, want := range map[string]repo.ID{"first": first, "second": second} {
		r2, err := repo.Open(ctx, be, []byte(pw))
		if err != nil {
			t.Fatalf("open with %q: %v", pw, err)
		}
		if r2.KeyID() != want || !bytes.Equal(r2.Key().Bytes(), r.Key().Bytes()) {
			t.Fatalf("password %q opened key %s, want %s with the same master key", pw, r2.KeyID().Short(), want.Short())
		}
	}

	// A key that does not exist is not "removed".
	if err := r.RemoveKey(ctx, repo.ID{1, 2, 3}); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("remove of an unknown key: %v, want ErrNotFound", err)
	}
	if err := r.RemoveKey(ctx, first); err != nil {
		t.Fatalf("remove first key: %v", err)
	}
	if _, err := repo.Open(ctx, be, []byte("first")); !errors.Is(err, repo.ErrWrongPassword) {
		t.Fatalf("removed password still opens: %v", err)
	}
	// The last key stays, whoever asks.
	if err := r.RemoveKey(ctx, second); err == nil {
		t.Fatal("removed the last key")
	}
	if countKeys(t, be) != 1 {
		t.Fatal("the last key file is gone")
	}
	if _, err := repo.Open(ctx, be, []byte("second")); err != nil {
		t.Fatalf("open after refused removal: %v", err)
	}
}

func TestLoadKeyFileChecksName(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	r := initRepo(t, be, "pw")
	h := repo.Handle{Type: repo.KeyFile, Name: r.KeyID().String()}
	raw := loadRaw(t, be, h)
	kf, err := r.LoadKeyFile(ctx, r.KeyID())
	if err != nil {
		t.Fatal(err)
	}
	if kf.Username == "" && kf.Hostname == "" {
		t.Error("key file records neither user nor host")
	}
	// Any change, even one that keeps valid JSON, is caught by the name.
	damaged := bytes.Replace(raw, []byte(`"version": 1`), []byte(`"version":  1`), 1)
	if bytes.Equal(damaged, raw) {
		t.Fatalf("key file lacks the version field:\n%s", raw)
	}
	saveRaw(t, be, h, damaged)
	if _, err := r.LoadKeyFile(ctx, r.KeyID()); err == nil {
		t.Fatal("a key file whose content does not match its name was accepted")
	}
	if _, err := r.LoadKeyFile(ctx, repo.ID{9}); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("missing key file: %v, want ErrNotFound", err)
	}
}

func TestSaveLoadFile(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	r := initRepo(t, be, "pw")
	inputs := [][]byte{
		nil,
		[]byte("x"),
		[]byte(strings.Repeat("compressible ", 10000)),
		random(1, 100000),
	}
	for _, ft := range []repo.FileType{repo.IndexFile, repo.SnapshotFile, repo.LockFile} {
		for i, plain := range inputs {
			id, err := r.SaveFile(ctx, ft, plain)
			if err != nil {
				t.Fatal(err)
			}
			raw := loadRaw(t, be, repo.Handle{Type: ft, Name: id.String()})
			if repo.ID(crypto.Hash(raw)) != id {
				t.Fatalf("%s %d: file name is not the hash of its bytes", ft, i)
			}
			if len(plain) > 16 && bytes.Contains(raw, plain[:16]) {
				t.Fatalf("%s %d: plaintext visible in the stored file", ft, i)
			}
			got, err := r.LoadFile(ctx, ft, id)
			if err != nil {
				t.Fatalf("%s %d: %v", ft, i, err)
			}
			if !bytes.Equal(got, plain) {
				t.Fatalf("%s %d: content differs after a round trip", ft, i)
			}
		}
	}
	// Compressible content is stored compressed.
	id, _ := r.SaveFile(ctx, repo.SnapshotFile, inputs[2])
	if fi, err := be.Stat(ctx, repo.Handle{Type: repo.SnapshotFile, Name: id.String()}); err != nil || fi.Size > int64(len(inputs[2])/10) {
		t.Fatalf("compressible file stored in %d bytes (%v)", fi.Size, err)
	}
	if _, err := r.LoadFile(ctx, repo.IndexFile, repo.ID{7}); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("missing file: %v, want ErrNotFound", err)
	}
}

func TestLoadFileDetectsTampering(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	r := initRepo(t, be, "pw")
	plain := []byte(`{"paths":["/data"]}`)
	id, err := r.SaveFile(ctx, repo.SnapshotFile, plain)
	if err != nil {
		t.Fatal(err)
	}
	h := repo.Handle{Type: repo.SnapshotFile, Name: id.String()}
	raw := loadRaw(t, be, h)
	for i := range raw {
		bad := append([]byte(nil), raw...)
		bad[i] ^= 0x40
		saveRaw(t, be, h, bad)
		if got, err := r.LoadFile(ctx, repo.SnapshotFile, id); err == nil {
			t.Fatalf("byte %d changed: loaded %q", i, got)
		}
	}
	saveRaw(t, be, h, raw[:len(raw)-1])
	if _, err := r.LoadFile(ctx, repo.SnapshotFile, id); err == nil {
		t.Fatal("truncated file loaded")
	}

	// A sealed file moved to another directory keeps a valid name but is
	// bound to its own: the associated data rejects it.
	saveRaw(t, be, h, raw)
	saveRaw(t, be, repo.Handle{Type: repo.IndexFile, Name: id.String()}, raw)
	if _, err := r.LoadFile(ctx, repo.IndexFile, id); !errors.Is(err, crypto.ErrAuth) {
		t.Fatalf("snapshot loaded as an index file: %v, want ErrAuth", err)
	}

	// A file of another repository, copied in under its own valid name.
	other := initRepo(t, mem.New(), "pw")
	oid, err := other.SaveFile(ctx, repo.SnapshotFile, plain)
	if err != nil {
		t.Fatal(err)
	}
	saveRaw(t, be, repo.Handle{Type: repo.SnapshotFile, Name: oid.String()}, loadRaw(t, other.Backend(), repo.Handle{Type: repo.SnapshotFile, Name: oid.String()}))
	if _, err := r.LoadFile(ctx, repo.SnapshotFile, oid); !errors.Is(err, crypto.ErrAuth) {
		t.Fatalf("another repository's file loaded: %v, want ErrAuth", err)
	}
}

func TestSaveLoadJSON(t *testing.T) {
	ctx := context.Background()
	r := initRepo(t, mem.New(), "pw")
	type doc struct {
		A string
		B []int
	}
	in := doc{A: "x", B: []int{1, 2, 3}}
	id, err := r.SaveJSON(ctx, repo.SnapshotFile, in)
	if err != nil {
		t.Fatal(err)
	}
	var out doc
	if err := r.LoadJSON(ctx, repo.SnapshotFile, id, &out); err != nil {
		t.Fatal(err)
	}
	if out.A != in.A || len(out.B) != 3 || out.B[2] != 3 {
		t.Fatalf("got %+v, want %+v", out, in)
	}
	if _, err := r.SaveJSON(ctx, repo.SnapshotFile, func() {}); err == nil {
		t.Fatal("SaveJSON of a function succeeded")
	}
	bad, err := r.SaveFile(ctx, repo.SnapshotFile, []byte("not json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.LoadJSON(ctx, repo.SnapshotFile, bad, &out); err == nil {
		t.Fatal("LoadJSON of a non-JSON file succeeded")
	}
}

func TestListIDsIgnoresStrays(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	r := initRepo(t, be, "pw")
	want := map[repo.ID]bool{}
	for i := range 5 {
		id, err := r.SaveFile(ctx, repo.IndexFile, []byte{byte(i)})
		if err != nil {
			t.Fatal(err)
		}
		want[id] = true
	}
	for _, name := range []string{"README", ".tmp-1234", strings.Repeat("g", 64), strings.Repeat("a", 63)} {
		saveRaw(t, be, repo.Handle{Type: repo.IndexFile, Name: name}, []byte("x"))
	}
	got := map[repo.ID]bool{}
	err := r.ListIDs(ctx, repo.IndexFile, func(id repo.ID, size int64) error {
		if size <= 0 {
			t.Errorf("%s: size %d", id.Short(), size)
		}
		got[id] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("ListIDs found %d ids, want %d", len(got), len(want))
	}
	for id := range want {
		if !got[id] {
			t.Errorf("ListIDs missed %s", id.Short())
		}
	}
}

func TestFindID(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	r := initRepo(t, be, "pw")
	mk := func(s string) repo.ID {
		id, err := repo.ParseID(s + strings.Repeat("0", 64-len(s)))
		if err != nil {
			t.Fatal(err)
		}
		saveRaw(t, be, repo.Handle{Type: repo.SnapshotFile, Name: id.String()}, []byte("x"))
		return id
	}
	a := mk("abcd1")
	b := mk("abcd2")
	c := mk("ef01")
	// A file of another type never matches.
	saveRaw(t, be, repo.Handle{Type: repo.IndexFile, Name: "9999" + strings.Repeat("0", 60)}, []byte("x"))

	cases := []struct {
		prefix string
		want   repo.ID
		err    error // nil: found
	}{
		{"abcd1", a, nil},
		{"ABCD2", b, nil},
		{"ef01", c, nil},
		{"ef010000", c, nil},
		{c.String(), c, nil},
		{"abcd", repo.ID{}, repo.ErrAmbiguous},
		{"abc", repo.ID{}, errors.New("too short")},
		{"", repo.ID{}, errors.New("too short")},
		{"abcd3", repo.ID{}, repo.ErrNotFound},
		{"9999", repo.ID{}, repo.ErrNotFound},
		{"ef011", repo.ID{}, repo.ErrNotFound},
	}
	for _, tc := range cases {
		got, err := r.FindID(ctx, repo.SnapshotFile, tc.prefix)
		switch {
		case tc.err == nil:
			if err != nil || got != tc.want {
				t.Errorf("FindID(%q) = %s, %v; want %s", tc.prefix, got.Short(), err, tc.want.Short())
			}
		case tc.err == repo.ErrAmbiguous || tc.err == repo.ErrNotFound:
			if !errors.Is(err, tc.err) {
				t.Errorf("FindID(%q): %v, want %v", tc.prefix, err, tc.err)
			}
		default:
			if err == nil || errors.Is(err, repo.ErrNotFound) || errors.Is(err, repo.ErrAmbiguous) {
				t.Errorf("FindID(%q): %v, want a prefix error", tc.prefix, err)
			}
		}
	}
}
