package tunnel

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// KeyFileError is a key file that cannot be used: unreadable, not a
// private key, or encrypted (Encrypted) and not available from ssh-agent.
type KeyFileError struct {
	File      string
	Encrypted bool
	Err       error
}

func (e *KeyFileError) Error() string {
	if e.Encrypted {
		return fmt.Sprintf("ssh key %s is encrypted with a passphrase and sendense never prompts for one: "+
			"load it into ssh-agent (ssh-add %s) and set SSH_AUTH_SOCK, or use a key without a passphrase", e.File, e.File)
	}
	return fmt.Sprintf("ssh key %s: %v (--ssh-key, [tunnel] key)", e.File, e.Err)
}

func (e *KeyFileError) Unwrap() error { return e.Err }

// AuthError is the server refusing every key offered.
type AuthError struct {
	Target  string   // user@host:port
	User    string   // remote user
	Offered []string // the keys offered: type, fingerprint and origin
	Err     error    // x/crypto/ssh's error
}

func (e *AuthError) Error() string {
	return fmt.Sprintf("ssh %s: the server refused the key for user %s (offered: %s): "+
		"add its public key to %s's authorized_keys on the server, or use the right key (--ssh-key, [tunnel] key) or user ([tunnel] user)",
		e.Target, e.User, strings.Join(e.Offered, ", "), e.User)
}

func (e *AuthError) Unwrap() error { return e.Err }

// auth holds the signers offered for one handshake.
type auth struct {
	signers []ssh.Signer
	offered []string
	agent   net.Conn // open agent connection, if any: closed after the handshake
}

func (a *auth) close() {
	if a.agent != nil {
		a.agent.Close()
	}
}

// newAuth loads the key file and/or connects to the agent.
func newAuth(c *Config) (*auth, error) {
	a := &auth{}
	if c.KeyFile != "" {
		if err := a.loadKeyFile(c); err != nil {
			a.close()
			return nil, err
		}
		if !c.UseAgent {
			return a, nil
		}
	}
	ag, err := a.dialAgent(c.AgentSocket)
	if err != nil {
		return nil, err
	}
	signers, err := ag.Signers()
	if err != nil {
		a.close()
		return nil, fmt.Errorf("ssh-agent at %s: list keys: %w", c.AgentSocket, err)
	}
	if len(signers) == 0 && len(a.signers) == 0 {
		a.close()
		return nil, fmt.Errorf("ssh-agent at %s holds no keys: add one with ssh-add, or give a key file (--ssh-key)", c.AgentSocket)
	}
	for _, s := range signers {
		a.add(s, "ssh-agent")
	}
	return a, nil
}

func (a *auth) dialAgent(sock string) (agent.ExtendedAgent, error) {
	if a.agent != nil {
		return agent.NewClient(a.agent), nil
	}
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("ssh-agent at %s (SSH_AUTH_SOCK): %w", sock, err)
	}
	a.agent = conn
	return agent.NewClient(conn), nil
}

func (a *auth) add(s ssh.Signer, origin string) {
	for _, have := range a.signers {
		if string(have.PublicKey().Marshal()) == string(s.PublicKey().Marshal()) {
			return
		}
	}
	a.signers = append(a.signers, s)
	a.offered = append(a.offered, fingerprint(s.PublicKey())+" from "+origin)
}

// loadKeyFile adds the key in c.KeyFile; an encrypted one is taken from
// the agent when the agent holds it.
func (a *auth) loadKeyFile(c *Config) error {
	pem, err := os.ReadFile(c.KeyFile)
	if err != nil {
		return &KeyFileError{File: c.KeyFile, Err: errors.Unwrap(err)}
	}
	signer, err := ssh.ParsePrivateKey(pem)
	clear(pem)
	var missing *ssh.PassphraseMissingError
	switch {
	case err == nil:
		a.add(signer, c.KeyFile)
		return nil
	case errors.As(err, &missing):
	default:
		return &KeyFileError{File: c.KeyFile, Err: fmt.Errorf("not a usable private key: %w", err)}
	}
	// Encrypted: find the same key in the agent.
	pub := missing.PublicKey
	if pub == nil {
		if text, err := os.ReadFile(c.KeyFile + ".pub"); err == nil {
			pub, _, _, _, _ = ssh.ParseAuthorizedKey(text)
		}
	}
	sock := c.AgentSocket
	if sock == "" {
		sock = os.Getenv("SSH_AUTH_SOCK")
	}
	if pub == nil || sock == "" {
		return &KeyFileError{File: c.KeyFile, Encrypted: true}
	}
	ag, err := a.dialAgent(sock)
	if err != nil {
		return &KeyFileError{File: c.KeyFile, Encrypted: true}
	}
	signers, err := ag.Signers()
	if err != nil {
		return &KeyFileError{File: c.KeyFile, Encrypted: true}
	}
	for _, s := range signers {
		if string(s.PublicKey().Marshal()) == string(pub.Marshal()) {
			a.add(s, c.KeyFile+" via ssh-agent")
			return nil
		}
	}
	return &KeyFileError{File: c.KeyFile, Encrypted: true}
}

// fingerprint is "ED25519 SHA256:…", as OpenSSH prints it.
func fingerprint(k ssh.PublicKey) string {
	return keyTypeLabel(k.Type()) + " " + ssh.FingerprintSHA256(k)
}

// keyTypeLabel is OpenSSH's short name of a key type.
func keyTypeLabel(t string) string {
	cert := strings.HasSuffix(t, "-cert-v01@openssh.com")
	t = strings.TrimSuffix(t, "-cert-v01@openssh.com")
	var l string
	switch {
	case t == ssh.KeyAlgoED25519:
		l = "ED25519"
	case strings.HasPrefix(t, "ecdsa-sha2-"):
		l = "ECDSA"
	case t == ssh.KeyAlgoRSA:
		l = "RSA"
	case t == ssh.KeyAlgoSKED25519:
		l = "ED25519-SK"
	case t == ssh.KeyAlgoSKECDSA256:
		l = "ECDSA-SK"
	case t == "ssh-dss":
		l = "DSA"
	default:
		l = t
	}
	if cert {
		l += "-CERT"
	}
	return l
}
