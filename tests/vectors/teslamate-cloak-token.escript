#!/usr/bin/env escript
%% The ciphertext TeslaMate stores for a token, built with the same Erlang calls:
%% TeslaMate.Vault: key = :crypto.hash(:sha256, ENCRYPTION_KEY), tag "AES.GCM.V1", iv_length 12;
%% Cloak.Ciphers.AES.GCM.encrypt/2: Encoder.encode(tag) <> iv <> ciphertag <> ciphertext,
%% with Cloak.Crypto.encrypt_one_time_aead(:aes_256_gcm, key, iv, "AES256GCM", plaintext);
%% Cloak.Tags.Encoder.encode/1 (tag < 128 bytes): <<1, byte_size(tag)>> <> tag.
main(_) ->
    EncryptionKey = <<"gridmate-known-answer \"key\" \\ with quotes">>,
    Plaintext = <<"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJrbm93bi1hbnN3ZXIifQ.c2ln">>,
    IV = <<16#a0,16#a1,16#a2,16#a3,16#a4,16#a5,16#a6,16#a7,16#a8,16#a9,16#aa,16#ab>>,
    Key = crypto:hash(sha256, EncryptionKey),
    Tag = <<"AES.GCM.V1">>,
    {Ciphertext, Ciphertag} = crypto:crypto_one_time_aead(aes_256_gcm, Key, IV, Plaintext, <<"AES256GCM">>, true),
    Blob = <<1, (byte_size(Tag)), Tag/binary, IV/binary, Ciphertag/binary, Ciphertext/binary>>,
    io:format("~s~n", [binary:encode_hex(Blob)]).
