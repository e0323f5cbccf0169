package qemu

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Secrets of encrypted images (Tools.Secret) reach qemu-img and qemu-nbd
// as libvirt hands them: a random one-time transport key is the only
// plain secret, read by the tool from SecretPath (a pipe the runner
// passes as file descriptor 3: never argv, environment or a file at
// rest); each image's secret is on the command line only encrypted
// under that key (AES-256-CBC, qemu's "secret" object with keyid and iv).

// SecretPath is where a tool run with a secret reads it.
const SecretPath = "/dev/fd/3"

// SecretRunner is a Runner that can hand a child a secret, one line of
// text: the child reads it from SecretPath, once. Encrypted images need
// one.
type SecretRunner interface {
	// RunSecret is Run with secret readable at SecretPath.
	RunSecret(ctx context.Context, secret []byte, name string, args ...string) ([]byte, error)
	// StartSecret is Start with secret readable at SecretPath and env
	// added to the environment.
	StartSecret(secret []byte, env []string, name string, args ...string) (Process, error)
}

// LUKS options of the images CreateImage and Convert encrypt: AES-256 in
// XTS mode. The PBKDF iteration time is short (20 ms): the secrets are
// 256-bit keys derived from the master key, not passphrases to
// strengthen (docs/repository.md, "Encryption"), and every open of an
// image would pay qemu's default of 2 seconds. CreateImage and Convert write
// the images themselves when the runner can (luks.go): the same images
// with a fixed iteration count.
const luksCreate = "encrypt.format=luks,encrypt.cipher-alg=aes-256,encrypt.cipher-mode=xts,encrypt.iter-time=20"

const transportID = "sendense-transport"

// secrets collects the secret objects of one tool run.
type secrets struct {
	t       *Tools
	key     []byte // transport key; nil until a secret is added
	objects []string
}

func (t *Tools) secrets() *secrets { return &secrets{t: t} }

// of returns the id of the secret object holding path's secret, "" when
// the image is not encrypted.
func (s *secrets) of(path string) string {
	if s.t == nil || s.t.Secret == nil {
		return ""
	}
	sec := s.t.Secret(path)
	if sec == nil {
		return ""
	}
	if s.key == nil {
		s.key = make([]byte, 32)
		rand.Read(s.key)
	}
	iv := make([]byte, aes.BlockSize)
	rand.Read(iv)
	b, _ := aes.NewCipher(s.key)
	pad := aes.BlockSize - len(sec)%aes.BlockSize
	buf := append(bytes.Clone(sec), bytes.Repeat([]byte{byte(pad)}, pad)...)
	cipher.NewCBCEncrypter(b, iv).CryptBlocks(buf, buf)
	id := "sendense-secret" + strconv.Itoa(len(s.objects))
	s.objects = append(s.objects, fmt.Sprintf("secret,id=%s,data=%s,keyid=%s,iv=%s,format=base64",
		id, base64.StdEncoding.EncodeToString(buf), transportID, base64.StdEncoding.EncodeToString(iv)))
	return id
}

// args are the --object options (none without secrets).
func (s *secrets) args() []string {
	if s.key == nil {
		return nil
	}
	out := []string{"--object", "secret,id=" + transportID + ",file=" + SecretPath + ",format=base64"}
	for _, o := range s.objects {
		out = append(out, "--object", o)
	}
	return out
}

// pinned is Pinned with each encrypted layer's secret.
func (s *secrets) pinned(chain ...string) string {
	var node any // nil: no backing file
	for i := len(chain) - 1; i >= 0; i-- {
		n := map[string]any{
			"driver":  "qcow2",
			"file":    map[string]string{"driver": "file", "filename": chain[i]},
			"backing": node,
		}
		if id := s.of(chain[i]); id != "" {
			n["encrypt"] = map[string]string{"format": "luks", "key-secret": id}
		}
		node = n
	}
	b, _ := json.Marshal(node)
	return "json:" + string(b)
}

// runner returns the runner to run with these secrets.
func (s *secrets) runner() (SecretRunner, error) {
	r, ok := s.t.runner().(SecretRunner)
	if !ok {
		return nil, fmt.Errorf("encrypted images: the runner %T cannot pass secrets to qemu", s.t.runner())
	}
	return r, nil
}

// run runs name with args (the --object options first), passing the
// transport key.
func (s *secrets) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if s.key == nil {
		return s.t.runner().Run(ctx, name, args...)
	}
	r, err := s.runner()
	if err != nil {
		return nil, err
	}
	return r.RunSecret(ctx, s.wire(), name, args...)
}

// wire is the transport key as the tool reads it: base64 text (one line,
// so that a remote shell reads it with its read builtin).
func (s *secrets) wire() []byte {
	return []byte(base64.StdEncoding.EncodeToString(s.key))
}

// luksBenchmarkFailed recognises a failure of qemu's PBKDF benchmark
// when it creates a LUKS header: it measures its thread's CPU time, which
// a loaded machine sometimes reports as nothing. Trying again helps.
func luksBenchmarkFailed(err error) bool {
	var ee *ExitError
	return errors.As(err, &ee) && strings.Contains(ee.Stderr, "Unable to get accurate CPU usage")
}
