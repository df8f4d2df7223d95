"""Tesla's cloud: Fleet API client, token sources (TeslaMate, own OAuth) and Cloak decryption."""
