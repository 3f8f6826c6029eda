package crypto_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/zeebo/blake3"
	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/chacha20poly1305"
)

// sealKeyFile builds a key file the way docs/format.md describes it, without
// the package's code, so the format is pinned and not just self-consistent.
func sealKeyFile(t *testing.T, master []byte, password string, ad []byte) *crypto.KeyFile {
	t.Helper()
	salt := randomBytes(t, 16)
	kek := argon2.IDKey([]byte(password), salt, testKDF.Time, testKDF.MemoryKiB, testKDF.Threads, 32)
	aead, err := chacha20poly1305.NewX(kek)
	if err != nil {
		t.Fatal(err)
	}
	nonce := randomBytes(t, crypto.NonceSize)
	return &crypto.KeyFile{
		Version: 1, Created: time.Now().UTC(), Username: "u", Hostname: "h",
		KDF: "argon2id", KDFParams: testKDF, Salt: salt,
		Data: aead.Seal(nonce, nonce, master, ad),
	}
}

func TestKeyFileFormat(t *testing.T) {
	master := randomBytes(t, crypto.KeySize)
	kf := sealKeyFile(t, master, "pw", []byte("cairn key"))
	parsed, err := crypto.ParseKeyFile(kf.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	k, err := parsed.Open([]byte("pw"))
	if err != nil {
		t.Fatalf("a key file built from the format description does not open: %v", err)
	}
	if !bytes.Equal(k.Bytes(), master) {
		t.Fatal("opened another master key")
	}

	// The master key bound to other associated data is not a key file's.
	for _, ad := range []string{"", "cairn pack header", "config", "cairn key\x00"} {
		kf := sealKeyFile(t, master, "pw", []byte(ad))
		if _, err := kf.Open([]byte("pw")); !errors.Is(err, crypto.ErrWrongPassword) {
			t.Errorf("master key sealed with associated data %q opened: %v", ad, err)
		}
	}
}

func TestKeyFileTampering(t *testing.T) {
	master := crypto.NewRandomKey()
	good := crypto.NewKeyFile(master, []byte("pw"), testKDF, "u", "h")
	clone := func() *crypto.KeyFile {
		kf := *good
		kf.Salt = append([]byte(nil), good.Salt...)
		kf.Data = append([]byte(nil), good.Data...)
		return &kf
	}
	// Every byte of the sealed master key, nonce and tag included, is checked.
	for i := range good.Data {
		kf := clone()
		kf.Data[i] ^= 0x10
		if _, err := kf.Open([]byte("pw")); !errors.Is(err, crypto.ErrWrongPassword) {
			t.Fatalf("data byte %d changed: %v, want ErrWrongPassword", i, err)
		}
	}
	// The salt and the cost parameters derive the key-encryption key.
	edits := map[string]func(*crypto.KeyFile){
		"salt byte":      func(kf *crypto.KeyFile) { kf.Salt[0] ^= 1 },
		"salt shortened": func(kf *crypto.KeyFile) { kf.Salt = kf.Salt[:8] },
		"time":           func(kf *crypto.KeyFile) { kf.Time++ },
		"memory":         func(kf *crypto.KeyFile) { kf.MemoryKiB += 8 },
		"threads":        func(kf *crypto.KeyFile) { kf.Threads++; kf.MemoryKiB = 16 * uint32(kf.Threads) },
	}
	for name, edit := range edits {
		kf := clone()
		edit(kf)
		parsed, err := crypto.ParseKeyFile(kf.Marshal())
		if err != nil {
			t.Fatalf("%s: the edited file should still parse: %v", name, err)
		}
		if _, err := parsed.Open([]byte("pw")); !errors.Is(err, crypto.ErrWrongPassword) {
			t.Errorf("%s changed: %v, want ErrWrongPassword", name, err)
		}
	}
	// The metadata is not authenticated, by design: changing it does not lock
	// the owner out.
	kf := clone()
	kf.Username, kf.Hostname, kf.Created = "mallory", "other", time.Unix(0, 0)
	if k, err := kf.Open([]byte("pw")); err != nil || !bytes.Equal(k.Bytes(), master.Bytes()) {
		t.Fatalf("edited metadata: %v", err)
	}
	// The original still opens: tampering copies did not alias it.
	if _, err := good.Open([]byte("pw")); err != nil {
		t.Fatal(err)
	}
}

func TestKeyFileWrongPasswords(t *testing.T) {
	kf := crypto.NewKeyFile(crypto.NewRandomKey(), []byte("pässwörd"), testKDF, "u", "h")
	for _, pw := range []string{"passwort", "pässwörd ", "Pässwörd", "pässwör", "", "pässwörd\n"} {
		if k, err := kf.Open([]byte(pw)); !errors.Is(err, crypto.ErrWrongPassword) || k != nil {
			t.Errorf("password %q: %v, want ErrWrongPassword", pw, err)
		}
	}
	if _, err := kf.Open([]byte("pässwörd")); err != nil {
		t.Fatal(err)
	}
}

// TestBlobIDUsesIDKey pins which half of the master key makes blob IDs: the
// last 32 bytes key BLAKE3, the first 32 encrypt.
func TestBlobIDUsesIDKey(t *testing.T) {
	raw := randomBytes(t, crypto.KeySize)
	data := randomBytes(t, 5000)
	k, err := crypto.KeyFromBytes(raw)
	if err != nil {
		t.Fatal(err)
	}
	h, err := blake3.NewKeyed(raw[32:])
	if err != nil {
		t.Fatal(err)
	}
	h.Write(data)
	var want [32]byte
	h.Sum(want[:0])
	if k.BlobID(data) != want {
		t.Fatal("BlobID is not keyed BLAKE3 with the second half of the master key")
	}

	other := append([]byte(nil), raw...)
	other[0] ^= 1 // encryption half only
	k2, _ := crypto.KeyFromBytes(other)
	if k2.BlobID(data) != k.BlobID(data) {
		t.Error("the encryption key changed blob ids")
	}
	other = append([]byte(nil), raw...)
	other[40] ^= 1 // ID half
	k3, _ := crypto.KeyFromBytes(other)
	if k3.BlobID(data) == k.BlobID(data) {
		t.Error("a different ID key gave the same blob id")
	}
	if k.BlobID(nil) == k3.BlobID(nil) {
		t.Error("the empty blob has the same id under two ID keys")
	}
}

// FuzzKeyFileDecode feeds ParseKeyFile truncations and edits of valid key
// files. Whatever it accepts must be usable: valid parameters and a
// serialization that parses back to the same file.
func FuzzKeyFileDecode(f *testing.F) {
	kf := crypto.NewKeyFile(crypto.NewRandomKey(), []byte("pw"), testKDF, "user", "host")
	indented := kf.Marshal()
	compact, err := json.Marshal(kf)
	if err != nil {
		f.Fatal(err)
	}
	for _, enc := range [][]byte{indented, compact} {
		f.Add(enc)
		for n := 0; n < len(enc); n += 7 {
			f.Add(enc[:n])
		}
		f.Add(enc[:len(enc)-1])
	}
	for _, r := range [][2]string{
		{`"version":1`, `"version":2`},
		{`"threads":1`, `"threads":0`},
		{`"time":1`, `"time":101`},
		{`"memory_kib":64`, `"memory_kib":4194305`},
		{`"kdf":"argon2id"`, `"kdf":"argon2i"`},
		{`"salt":"`, `"salt":"AA`},
		{`"data":"`, `"data":"AAAA`},
		{`"created":"`, `"created":"x`},
		{`{`, `{"extra":true,`},
	} {
		f.Add(bytes.Replace(compact, []byte(r[0]), []byte(r[1]), 1))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		kf, err := crypto.ParseKeyFile(data)
		if err != nil {
			return
		}
		p := kf.KDFParams
		if kf.Version != 1 || kf.KDF != "argon2id" || p.Time < 1 || p.Threads < 1 ||
			p.MemoryKiB < 8*uint32(p.Threads) || len(kf.Salt) < 8 || len(kf.Data) != crypto.Overhead+crypto.KeySize {
			t.Fatalf("accepted an unusable key file: %+v", kf)
		}
		back, err := crypto.ParseKeyFile(kf.Marshal())
		if err != nil {
			t.Fatalf("re-serialized key file rejected: %v", err)
		}
		if back.Version != kf.Version || back.KDFParams != kf.KDFParams || back.Username != kf.Username ||
			back.Hostname != kf.Hostname || !back.Created.Equal(kf.Created) ||
			!bytes.Equal(back.Salt, kf.Salt) || !bytes.Equal(back.Data, kf.Data) {
			t.Fatalf("round trip changed the key file:\n%+v\n%+v", kf, back)
		}
	})
}
