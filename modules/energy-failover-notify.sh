# keepalived's notify program for the energy manager: TYPE NAME STATE PRIORITY,
# run as root. The new state is recorded first: the energy service reads it
# before every write, so from this instant a node that is not MASTER writes
# nothing, even before systemd has stopped its service.
case "$3" in
  MASTER | BACKUP | FAULT | STOP) ;;
  *) exit 0 ;;
esac
mkdir -p @roleDirectory@
chmod 0755 @roleDirectory@
printf '%s\n' "$3" >@roleFile@.new
chmod 0644 @roleFile@.new
mv -f @roleFile@.new @roleFile@
case "$3" in
  MASTER) @systemctl@ start --no-block gridmate-energy.service ;;
  BACKUP|FAULT|STOP) @systemctl@ stop --no-block gridmate-energy.service ;;
esac
exec @systemctl@ start --no-block "gridmate-energy-failover@$3.service"
