// What the 1BitPay API doc's Java snippet does, as a reference for the interop test.
//
//   java ShardSign encrypt PFX   reads payload lines (UTF-8) on stdin, prints base64 data lines
//   java ShardSign decrypt PFX   reads base64 data lines on stdin, prints recovered payload lines
//
// The password comes from the SHARD_PASSWORD environment variable (never argv).
// KeyStore.getInstance("PKCS12") with the JDK's own provider (no Bouncy Castle),
// the key entry aliased "1BitPay" or else the first key entry, Cipher.getInstance("RSA")
// (RSA/ECB/PKCS1Padding): ENCRYPT_MODE with the private key, DECRYPT_MODE with the
// certificate's public key.  java.util.Base64 replaces the doc's sun.misc.BASE64Encoder.

import java.io.BufferedReader;
import java.io.FileDescriptor;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.cert.Certificate;
import java.util.Base64;
import java.util.Collections;
import javax.crypto.Cipher;

public final class ShardSign {
    private ShardSign() {
    }

    private static String keyAlias(KeyStore store) throws Exception {
        if (store.isKeyEntry("1BitPay")) {
            return "1BitPay";
        }
        for (String alias : Collections.list(store.aliases())) {
            if (store.isKeyEntry(alias)) {
                return alias;
            }
        }
        throw new IllegalStateException("no private key entry in the keystore");
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 2 || !(args[0].equals("encrypt") || args[0].equals("decrypt"))) {
            System.err.println("usage: ShardSign encrypt|decrypt PFX  (password in SHARD_PASSWORD)");
            System.exit(2);
        }
        String password = System.getenv("SHARD_PASSWORD");
        if (password == null) {
            System.err.println("SHARD_PASSWORD is not set");
            System.exit(2);
        }
        char[] pfxPassword = password.toCharArray();

        KeyStore store = KeyStore.getInstance("PKCS12");
        try (InputStream inputStream = new FileInputStream(args[1])) {
            store.load(inputStream, pfxPassword);
        }
        String alias = keyAlias(store);

        Cipher cipher = Cipher.getInstance("RSA");
        if (args[0].equals("encrypt")) {
            PrivateKey privateKey = (PrivateKey) store.getKey(alias, pfxPassword);
            cipher.init(Cipher.ENCRYPT_MODE, privateKey);
        } else {
            Certificate certificate = store.getCertificate(alias);
            cipher.init(Cipher.DECRYPT_MODE, certificate.getPublicKey());
        }

        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        PrintStream out = new PrintStream(new FileOutputStream(FileDescriptor.out), true, "UTF-8");
        String line;
        while ((line = in.readLine()) != null) {
            if (args[0].equals("encrypt")) {
                byte[] bytes = cipher.doFinal(line.getBytes("UTF-8"));
                out.println(Base64.getEncoder().encodeToString(bytes));
            } else {
                byte[] bytes = cipher.doFinal(Base64.getDecoder().decode(line));
                out.println(new String(bytes, StandardCharsets.UTF_8));
            }
        }
        out.flush();
    }
}
