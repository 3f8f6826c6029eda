// Package crypto holds the repository's master key: authenticated encryption
// of every object (XChaCha20-Poly1305) and keyed BLAKE3 blob IDs.
//
// See docs/format.md for why XChaCha20-Poly1305: its 192-bit random nonces
// never run out, where AES-GCM's 96-bit ones are safe for about 2^32 objects.
package crypto

import (
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"

	"github.com/zeebo/blake3"
	"golang.org/x/crypto/chacha20poly1305"
)

const (
	// NonceSize is the length of the random nonce at the start of a sealed object.
	NonceSize = chacha20poly1305.NonceSizeX
	// Overhead is how much longer a sealed object is than its plaintext.
	Overhead = NonceSize + chacha20poly1305.Overhead
	// KeySize is the length of a serialized master key.
	KeySize = 64
)

// ErrAuth means a sealed object failed authentication: wrong key or damaged bytes.
var ErrAuth = errors.New("ciphertext authentication failed")

// Key is a repository master key. It is safe for concurrent use.
type Key struct {
	raw    [KeySize]byte
	aead   cipher.AEAD
	hashes sync.Pool // keyed BLAKE3 hashers, reset before each use
}

// NewRandomKey returns a fresh master key from the system's random source.
func NewRandomKey() *Key {
	var raw [KeySize]byte
	if _, err := rand.Read(raw[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // the OS has no randomness: nothing is safe
	}
	k, _ := KeyFromBytes(raw[:])
	return k
}

// KeyFromBytes rebuilds a master key from its 64 serialized bytes.
func KeyFromBytes(b []byte) (*Key, error) {
	if len(b) != KeySize {
		return nil, fmt.Errorf("master key has %d bytes, want %d", len(b), KeySize)
	}
	k := &Key{}
	copy(k.raw[:], b)
	aead, err := chacha20poly1305.NewX(k.raw[:32])
	if err != nil {
		return nil, err
	}
	k.aead = aead
	idKey := k.raw[32:]
	k.hashes.New = func() any {
		h, err := blake3.NewKeyed(idKey)
		if err != nil {
			panic(err) // the key length is fixed at 32 above
		}
		return h
	}
	return k, nil
}

// Bytes returns the serialized master key.
func (k *Key) Bytes() []byte { return append([]byte(nil), k.raw[:]...) }

// Seal encrypts plaintext with a random nonce and appends nonce||ciphertext||tag
// to dst. ad is authenticated but not stored.
func (k *Key) Seal(dst, plaintext, ad []byte) []byte {
	off := len(dst)
	dst = grow(dst, NonceSize)
	nonce := dst[off : off+NonceSize]
	if _, err := rand.Read(nonce); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return k.aead.Seal(dst, nonce, plaintext, ad)
}

// SealInPlace is Seal without a second buffer: buf holds NonceSize spare
// bytes followed by the plaintext, and becomes nonce||ciphertext||tag (within
// its capacity if it has Overhead-NonceSize to spare).
func (k *Key) SealInPlace(buf, ad []byte) []byte {
	nonce := buf[:NonceSize]
	if _, err := rand.Read(nonce); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return k.aead.Seal(buf[:NonceSize], nonce, buf[NonceSize:], ad)
}

// Open authenticates and decrypts a sealed object, appending the plaintext to dst.
func (k *Key) Open(dst, sealed, ad []byte) ([]byte, error) {
	return openAEAD(k.aead, dst, sealed, ad)
}

func openAEAD(aead cipher.AEAD, dst, sealed, ad []byte) ([]byte, error) {
	if len(sealed) < Overhead {
		return nil, fmt.Errorf("sealed object of %d bytes is too short: %w", len(sealed), ErrAuth)
	}
	out, err := aead.Open(dst, sealed[:NonceSize], sealed[NonceSize:], ad)
	if err != nil {
		return nil, ErrAuth
	}
	return out, nil
}

// BlobID returns the keyed BLAKE3-256 of data.
func (k *Key) BlobID(data []byte) [32]byte {
	h := k.hashes.Get().(*blake3.Hasher)
	h.Reset()
	_, _ = h.Write(data)
	var id [32]byte
	h.Sum(id[:0])
	k.hashes.Put(h)
	return id
}

// Hash returns the unkeyed BLAKE3-256 of data: the name of a stored file.
func Hash(data []byte) [32]byte { return blake3.Sum256(data) }

// NewHasher returns an unkeyed BLAKE3-256 hasher for data that is streamed.
func NewHasher() *blake3.Hasher { return blake3.New() }

func grow(b []byte, n int) []byte {
	if cap(b)-len(b) < n {
		nb := make([]byte, len(b), len(b)+n+1024)
		copy(nb, b)
		b = nb
	}
	return b[:len(b)+n]
}
