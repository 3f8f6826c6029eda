package crypto_test

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"testing"

	"github.com/cairn-backup/cairn/crypto"
)

// testKDF keeps argon2id cheap: the tests check the format, not the cost.
var testKDF = crypto.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSealOpenRoundTrip(t *testing.T) {
	k := crypto.NewRandomKey()
	ad := []byte("index")
	for _, n := range []int{0, 1, 15, 16, 17, 4096, 1 << 20} {
		plain := randomBytes(t, n)
		sealed := k.Seal(nil, plain, ad)
		if len(sealed) != n+crypto.Overhead {
			t.Fatalf("%d bytes: sealed length %d, want %d", n, len(sealed), n+crypto.Overhead)
		}
		got, err := k.Open(nil, sealed, ad)
		if err != nil {
			t.Fatalf("%d bytes: open: %v", n, err)
		}
		if !bytes.Equal(got, plain) {
			t.Fatalf("%d bytes: plaintext differs after round trip", n)
		}
	}
}

// TestSealInPlace: sealing inside the plaintext's buffer gives what Open
// reads back, using the buffer's spare capacity when it has some.
func TestSealInPlace(t *testing.T) {
	k := crypto.NewRandomKey()
	ad := []byte("data")
	for _, n := range []int{0, 1, 100, 1 << 20} {
		plain := randomBytes(t, n)
		buf := make([]byte, crypto.NonceSize, crypto.NonceSize+n+crypto.Overhead)
		buf = append(buf, plain...)
		sealed := k.SealInPlace(buf, ad)
		if len(sealed) != n+crypto.Overhead || &sealed[0] != &buf[0] {
			t.Fatalf("%d bytes: sealed %d bytes, in place %v", n, len(sealed), &sealed[0] == &buf[0])
		}
		got, err := k.Open(nil, sealed, ad)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("%d bytes: open: %v, equal %v", n, err, bytes.Equal(got, plain))
		}
	}
}

func TestSealAppendsToDst(t *testing.T) {
	k := crypto.NewRandomKey()
	prefix := []byte("prefix")
	plain := []byte("some plaintext")
	sealed := k.Seal(append([]byte(nil), prefix...), plain, nil)
	if !bytes.HasPrefix(sealed, prefix) {
		t.Fatalf("Seal overwrote dst's contents")
	}
	got, err := k.Open([]byte("x"), sealed[len(prefix):], nil)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "x"+string(plain) {
		t.Fatalf("Open did not append to dst: %q", got)
	}
}

func TestSealUsesFreshNonces(t *testing.T) {
	k := crypto.NewRandomKey()
	a := k.Seal(nil, []byte("same"), nil)
	b := k.Seal(nil, []byte("same"), nil)
	if bytes.Equal(a[:crypto.NonceSize], b[:crypto.NonceSize]) || bytes.Equal(a, b) {
		t.Fatal("two seals of the same plaintext are identical: nonce reused")
	}
}

func TestOpenDetectsTampering(t *testing.T) {
	k := crypto.NewRandomKey()
	ad := []byte("snapshots")
	sealed := k.Seal(nil, []byte("the quick brown fox"), ad)
	for i := range sealed {
		for _, bit := range []byte{0x01, 0x80} {
			bad := append([]byte(nil), sealed...)
			bad[i] ^= bit
			if got, err := k.Open(nil, bad, ad); !errors.Is(err, crypto.ErrAuth) || got != nil {
				t.Fatalf("byte %d flipped with %#x: got %q, %v; want ErrAuth", i, bit, got, err)
			}
		}
	}
	for n := range sealed {
		if _, err := k.Open(nil, sealed[:n], ad); !errors.Is(err, crypto.ErrAuth) {
			t.Fatalf("truncated to %d bytes: %v, want ErrAuth", n, err)
		}
	}
	if _, err := k.Open(nil, append(sealed, 0), ad); !errors.Is(err, crypto.ErrAuth) {
		t.Fatalf("extended by one byte: %v, want ErrAuth", err)
	}
}

func TestOpenWrongAssociatedData(t *testing.T) {
	k := crypto.NewRandomKey()
	sealed := k.Seal(nil, []byte("config"), []byte("config"))
	for _, ad := range [][]byte{nil, []byte("index"), []byte("confi"), []byte("config\x00")} {
		if _, err := k.Open(nil, sealed, ad); !errors.Is(err, crypto.ErrAuth) {
			t.Errorf("ad %q: %v, want ErrAuth", ad, err)
		}
	}
}

func TestOpenWrongKey(t *testing.T) {
	sealed := crypto.NewRandomKey().Seal(nil, []byte("secret"), nil)
	if _, err := crypto.NewRandomKey().Open(nil, sealed, nil); !errors.Is(err, crypto.ErrAuth) {
		t.Fatalf("another key opened the object: %v", err)
	}
}

func TestKeyFromBytes(t *testing.T) {
	k := crypto.NewRandomKey()
	k2, err := crypto.KeyFromBytes(k.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	plain := []byte("data")
	if got, err := k2.Open(nil, k.Seal(nil, plain, nil), nil); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("rebuilt key cannot open: %q, %v", got, err)
	}
	if k.BlobID(plain) != k2.BlobID(plain) {
		t.Fatal("rebuilt key gives different blob ids")
	}
	for _, n := range []int{0, 32, 63, 65} {
		if _, err := crypto.KeyFromBytes(make([]byte, n)); err == nil {
			t.Errorf("KeyFromBytes accepted %d bytes", n)
		}
	}
}

func TestBlobIDIsKeyed(t *testing.T) {
	k1, k2 := crypto.NewRandomKey(), crypto.NewRandomKey()
	data := randomBytes(t, 1000)
	if k1.BlobID(data) != k1.BlobID(data) {
		t.Fatal("same key, same data: different ids")
	}
	if k1.BlobID(data) == k2.BlobID(data) {
		t.Fatal("two keys give the same id: BlobID is not keyed")
	}
	if id := k1.BlobID(data); id == crypto.Hash(data) {
		t.Fatal("BlobID equals the unkeyed hash")
	}
	other := append([]byte(nil), data...)
	other[500] ^= 1
	if k1.BlobID(data) == k1.BlobID(other) {
		t.Fatal("different data, same id")
	}
}

func TestBlobIDConcurrent(t *testing.T) {
	k := crypto.NewRandomKey()
	inputs := make([][]byte, 64)
	want := make([][32]byte, len(inputs))
	for i := range inputs {
		inputs[i] = randomBytes(t, 100*i)
		want[i] = k.BlobID(inputs[i])
	}
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			for range 20 {
				for i, in := range inputs {
					if k.BlobID(in) != want[i] {
						errs <- errors.New("concurrent BlobID gave a different id")
						return
					}
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

func TestKeyFileRoundTrip(t *testing.T) {
	master := crypto.NewRandomKey()
	kf := crypto.NewKeyFile(master, []byte("correct horse"), testKDF, "alice", "host1")
	data := kf.Marshal()

	parsed, err := crypto.ParseKeyFile(data)
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, data)
	}
	if parsed.Username != "alice" || parsed.Hostname != "host1" || parsed.KDFParams != testKDF || parsed.KDF != "argon2id" {
		t.Fatalf("parsed key file lost fields: %+v", parsed)
	}
	k, err := parsed.Open([]byte("correct horse"))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if !bytes.Equal(k.Bytes(), master.Bytes()) {
		t.Fatal("opened master key differs")
	}

	if _, err := parsed.Open([]byte("correct horsf")); !errors.Is(err, crypto.ErrWrongPassword) {
		t.Fatalf("wrong password: %v, want ErrWrongPassword", err)
	}
	if _, err := parsed.Open(nil); !errors.Is(err, crypto.ErrWrongPassword) {
		t.Fatalf("empty password: %v, want ErrWrongPassword", err)
	}
}

func TestKeyFileJSONFields(t *testing.T) {
	kf := crypto.NewKeyFile(crypto.NewRandomKey(), []byte("pw"), testKDF, "u", "h")
	var m map[string]any
	if err := json.Unmarshal(kf.Marshal(), &m); err != nil {
		t.Fatal(err)
	}
	// docs/format.md, "Key files".
	for _, f := range []string{"version", "created", "username", "hostname", "kdf", "time", "memory_kib", "threads", "salt", "data"} {
		if _, ok := m[f]; !ok {
			t.Errorf("key file JSON lacks %q: %v", f, m)
		}
	}
	if len(m) != 10 {
		t.Errorf("key file JSON has %d fields, want 10: %v", len(m), m)
	}
}

func TestKeyFileSaltsDiffer(t *testing.T) {
	master := crypto.NewRandomKey()
	a := crypto.NewKeyFile(master, []byte("pw"), testKDF, "u", "h")
	b := crypto.NewKeyFile(master, []byte("pw"), testKDF, "u", "h")
	if bytes.Equal(a.Salt, b.Salt) || bytes.Equal(a.Data, b.Data) {
		t.Fatal("two key files for the same password share salt or data")
	}
}

func TestParseKeyFileRejects(t *testing.T) {
	good := crypto.NewKeyFile(crypto.NewRandomKey(), []byte("pw"), testKDF, "u", "h")
	if _, err := crypto.ParseKeyFile(good.Marshal()); err != nil {
		t.Fatalf("good key file: %v", err)
	}
	edit := func(f func(kf *crypto.KeyFile)) []byte {
		kf := *good
		kf.Salt = append([]byte(nil), good.Salt...)
		kf.Data = append([]byte(nil), good.Data...)
		f(&kf)
		return kf.Marshal()
	}
	cases := map[string][]byte{
		"empty":           nil,
		"not json":        []byte("cairn key"),
		"json array":      []byte("[]"),
		"truncated json":  good.Marshal()[:40],
		"version 0":       edit(func(kf *crypto.KeyFile) { kf.Version = 0 }),
		"version 2":       edit(func(kf *crypto.KeyFile) { kf.Version = 2 }),
		"kdf scrypt":      edit(func(kf *crypto.KeyFile) { kf.KDF = "scrypt" }),
		"kdf empty":       edit(func(kf *crypto.KeyFile) { kf.KDF = "" }),
		"time 0":          edit(func(kf *crypto.KeyFile) { kf.Time = 0 }),
		"time huge":       edit(func(kf *crypto.KeyFile) { kf.Time = 1 << 30 }),
		"threads 0":       edit(func(kf *crypto.KeyFile) { kf.Threads = 0 }),
		"memory 0":        edit(func(kf *crypto.KeyFile) { kf.MemoryKiB = 0 }),
		"memory < 8/thr":  edit(func(kf *crypto.KeyFile) { kf.Threads = 4; kf.MemoryKiB = 31 }),
		"memory 1 TiB":    edit(func(kf *crypto.KeyFile) { kf.MemoryKiB = 1 << 30 }),
		"salt missing":    edit(func(kf *crypto.KeyFile) { kf.Salt = nil }),
		"salt 7 bytes":    edit(func(kf *crypto.KeyFile) { kf.Salt = kf.Salt[:7] }),
		"data missing":    edit(func(kf *crypto.KeyFile) { kf.Data = nil }),
		"data short":      edit(func(kf *crypto.KeyFile) { kf.Data = kf.Data[:len(kf.Data)-1] }),
		"data long":       edit(func(kf *crypto.KeyFile) { kf.Data = append(kf.Data, 0) }),
		"salt not base64": bytes.Replace(good.Marshal(), []byte(`"salt": "`), []byte(`"salt": "!`), 1),
		"threads 256":     bytes.Replace(good.Marshal(), []byte(`"threads": 1`), []byte(`"threads": 256`), 1),
	}
	for name, data := range cases {
		if kf, err := crypto.ParseKeyFile(data); err == nil {
			t.Errorf("%s: accepted %+v", name, kf)
		}
	}
}

func FuzzParseKeyFile(f *testing.F) {
	good := crypto.NewKeyFile(crypto.NewRandomKey(), []byte("pw"), testKDF, "u", "h").Marshal()
	f.Add(good)
	f.Add([]byte(`{"version":1,"kdf":"argon2id","time":1,"memory_kib":8,"threads":1,"salt":"AAAAAAAAAAA=","data":""}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		kf, err := crypto.ParseKeyFile(data)
		if err != nil {
			if kf != nil {
				t.Fatal("error with a key file")
			}
			return
		}
		// Whatever is accepted must survive its own serialization unchanged.
		again := kf.Marshal()
		kf2, err := crypto.ParseKeyFile(again)
		if err != nil {
			t.Fatalf("re-marshalled key file rejected: %v\n%s", err, again)
		}
		if !bytes.Equal(kf2.Marshal(), again) {
			t.Fatalf("key file changed on a second round trip:\n%s\n%s", again, kf2.Marshal())
		}
	})
}
