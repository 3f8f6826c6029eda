package crypto

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/chacha20poly1305"
)

// ErrWrongPassword means a password did not open a key file.
var ErrWrongPassword = errors.New("wrong password")

// KDFParams are argon2id's cost parameters, stored in each key file.
type KDFParams struct {
	Time      uint32 `json:"time"`
	MemoryKiB uint32 `json:"memory_kib"`
	Threads   uint8  `json:"threads"`
}

// DefaultKDF costs about 0.1 s on one core of a small server, with a memory
// cost well above OWASP's argon2id minimum and small enough to keep a backup's
// peak memory low.
var DefaultKDF = KDFParams{Time: 3, MemoryKiB: 32 << 10, Threads: 2}

// KeyFile is the JSON stored under keys/: a master key sealed with a password.
type KeyFile struct {
	Version  int       `json:"version"`
	Created  time.Time `json:"created"`
	Username string    `json:"username"`
	Hostname string    `json:"hostname"`
	KDF      string    `json:"kdf"`
	KDFParams
	Salt []byte `json:"salt"`
	Data []byte `json:"data"`
}

var keyAD = []byte("cairn key")

// NewKeyFile seals master under password.
func NewKeyFile(master *Key, password []byte, p KDFParams, username, hostname string) *KeyFile {
	kf := &KeyFile{
		Version: 1, Created: time.Now().UTC(), Username: username, Hostname: hostname,
		KDF: "argon2id", KDFParams: p, Salt: make([]byte, 16),
	}
	if _, err := rand.Read(kf.Salt); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	aead := kf.kek(password)
	nonce := make([]byte, NonceSize, NonceSize+KeySize+chacha20poly1305.Overhead)
	if _, err := rand.Read(nonce); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	kf.Data = aead.Seal(nonce, nonce, master.raw[:], keyAD)
	return kf
}

func (kf *KeyFile) kek(password []byte) interface {
	Seal(dst, nonce, plaintext, ad []byte) []byte
	Open(dst, nonce, ciphertext, ad []byte) ([]byte, error)
	NonceSize() int
	Overhead() int
} {
	mapHeap(int(kf.MemoryKiB) << 10)
	k := argon2.IDKey(password, kf.Salt, kf.Time, kf.MemoryKiB, kf.Threads, 32)
	aead, err := chacha20poly1305.NewX(k)
	if err != nil {
		panic(err) // k is always 32 bytes
	}
	return aead
}

// mapHeap leaves n bytes of the heap written to and free, for argon2 to
// take next. argon2 reads each block of its memory before it writes it: on
// memory new to the process each page is then mapped twice, first to the
// kernel's shared zero page and again on the write, and the second mapping
// interrupts every core the program runs on to flush its TLB. That was
// more than half of the KDF's CPU time (240 ms against 95 for 32 MiB on
// two cores of a VM); pages the heap has written once are mapped for good.
func mapHeap(n int) {
	b := make([]byte, n)
	for i := 0; i < len(b); i += os.Getpagesize() {
		b[i] = 1
	}
	runtime.KeepAlive(b)
	b = nil
	runtime.GC()
}

// ParseKeyFile decodes and validates a key file without opening it.
func ParseKeyFile(data []byte) (*KeyFile, error) {
	var kf KeyFile
	if err := json.Unmarshal(data, &kf); err != nil {
		return nil, fmt.Errorf("decode key file: %w", err)
	}
	switch {
	case kf.Version != 1:
		return nil, fmt.Errorf("key file version %d is not supported", kf.Version)
	case kf.KDF != "argon2id":
		return nil, fmt.Errorf("key file kdf %q is not supported", kf.KDF)
	case kf.Time < 1 || kf.Time > 100 || kf.Threads < 1 || kf.MemoryKiB < 8*uint32(kf.Threads) || kf.MemoryKiB > 4<<20:
		return nil, fmt.Errorf("key file has implausible kdf parameters %+v", kf.KDFParams)
	case len(kf.Salt) < 8:
		return nil, errors.New("key file salt is too short")
	case len(kf.Data) != Overhead+KeySize:
		return nil, fmt.Errorf("key file data has %d bytes, want %d", len(kf.Data), Overhead+KeySize)
	}
	return &kf, nil
}

// Open derives the key-encryption key from password and unseals the master key.
func (kf *KeyFile) Open(password []byte) (*Key, error) {
	raw, err := openAEAD(kf.kek(password), nil, kf.Data, keyAD)
	if err != nil {
		return nil, ErrWrongPassword
	}
	return KeyFromBytes(raw)
}

// Marshal returns the key file's JSON.
func (kf *KeyFile) Marshal() []byte {
	b, err := json.MarshalIndent(kf, "", "  ")
	if err != nil {
		panic(err) // plain struct: cannot fail
	}
	return b
}
