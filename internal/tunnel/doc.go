// Package tunnel is the capture agent's SSH connection to the control
// plane: one outbound SSH connection (x/crypto/ssh; port 443 by default;
// Ed25519, ECDSA or RSA keys from a key file or ssh-agent; host keys checked
// against a known_hosts file) that carries
//
//   - NBD connections to servers on the control plane: ForwardUnix and
//     ForwardTCP expose a remote unix socket or host:port as a local unix
//     socket in a private directory, which libnbd (internal/nbd,
//     internal/copier) connects to like any NBD server (Forward.URI);
//     every local connection becomes one SSH channel
//     (direct-streamlocal@openssh.com or direct-tcpip);
//   - remote commands: Run runs one to completion, Start starts a
//     long-running one (e.g. qemu-nbd) that dies with its session, the
//     connection or the context; ShellQuote builds their command lines.
//
// Channels are spread round-robin over Config.Connections SSH connections
// (see docs/tunnel.md for the measurements behind the default). Keepalives
// detect a dead connection: the Tunnel then closes itself and its forwards,
// Done is closed and Err says why. Reconnect (or Redial) dials again with
// exponential backoff; callers re-create their forwards on the new Tunnel.
// Config.Rate limits the bytes through all forwards and DialUnix/DialTCP
// connections together (both directions).
//
// Errors name the user, host, port and key file, never key material.
// Unknown and changed host keys are refused with the fingerprint and the
// known_hosts line to add (HostKeyError); AcceptNewHostKey writes unknown
// keys but never replaces a changed one. Encrypted key files are refused
// with a hint to use ssh-agent: nothing here ever prompts.
package tunnel
